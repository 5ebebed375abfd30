"""gpu_replay.compat.PrioritizedReplayMemory: the push / sample / update_priorities memory API
over the library's prioritized buffer."""
import numpy as np
import pytest
import torch

from gpu_replay.compat import PrioritizedReplayMemory


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_memory_shapes_dtypes_device():
    m = PrioritizedReplayMemory(100, 6, device="cpu", generator=gen())
    assert len(m) == 0
    for t in range(10):
        m.push(np.full(6, t, np.float32), t % 3, 0.5 * t, np.full(6, t + 1, np.float32), t == 9)
    assert len(m) == 10 and not m.has_aux
    out = m.sample(32, beta=0.4)
    assert len(out) == 7
    states, actions, rewards, next_states, dones, weights, indices = out
    want = [((32, 6), torch.float32), ((32, 1), torch.int64), ((32, 1), torch.float32),
            ((32, 6), torch.float32), ((32, 1), torch.float32), ((32, 1), torch.float32),
            ((32,), torch.int64)]
    for t, (shape, dt) in zip(out, want):
        assert tuple(t.shape) == shape and t.dtype == dt and t.device.type == "cpu"
    assert set(dones.flatten().tolist()) <= {0.0, 1.0}
    assert (weights > 0).all() and (weights <= 1).all()
    # row consistency: state t -> action t % 3, reward t / 2, next state t + 1, done iff t == 9
    t = states[:, 0].long()
    assert torch.equal(actions[:, 0], t % 3)
    assert torch.equal(rewards[:, 0], 0.5 * t.float())
    assert torch.equal(next_states[:, 0], t.float() + 1)
    assert torch.equal(dones[:, 0], (t == 9).float())
    *_, disc = m.sample(8, 0.4, return_discount=True)
    assert disc.shape == (8, 1) and disc.dtype == torch.float32 and torch.all(disc == np.float32(0.99))


def test_memory_default_device_and_state_dtype():
    m = PrioritizedReplayMemory(50, (2, 3), state_dtype=torch.uint8)
    assert m.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    m.push(np.ones((2, 3), np.uint8), 1, 1.0, np.zeros((2, 3), np.uint8), False)
    s, *_ = m.sample(4)
    assert s.shape == (4, 2, 3) and s.dtype == torch.uint8


def test_memory_hybrid_six_argument_push():
    """The seed's agent.step: memory.push(state, discrete_action, continuous_action, reward, next_state, done)."""
    m = PrioritizedReplayMemory(64, 4, device="cpu", generator=gen())  # aux size decided by the first push
    for t in range(8):
        m.push(np.full(4, t, np.float32), t % 4, 0.25 * t, float(t), np.zeros(4, np.float32), False)
    assert m.has_aux and m.aux_action_size == 1
    out = m.sample_hybrid(16, beta=0.5)
    assert len(out) == 8
    states, da, ca, rewards, next_states, dones, weights, indices = out
    assert da.shape == (16, 1) and da.dtype == torch.int64
    assert ca.shape == (16, 1) and ca.dtype == torch.float32
    t = states[:, 0]
    assert torch.equal(ca[:, 0], 0.25 * t) and torch.equal(rewards[:, 0], t)
    assert len(m.sample(4)) == 7  # sample() leaves the continuous action out
    assert len(m.sample_hybrid(4, 0.4, return_discount=True)) == 9
    # keyword form, and an explicit size
    m2 = PrioritizedReplayMemory(8, 3, aux_action_size=2, device="cpu")
    m2.push(np.zeros(3), 1, 0.0, np.zeros(3), False, aux_action=[0.5, -0.5])
    assert m2.sample_hybrid(2)[2].shape == (2, 2)


def test_memory_priorities_shift_sampling():
    N, B = 100, 4000
    m = PrioritizedReplayMemory(N, 2, alpha=0.6, eps=1e-6, device="cpu", generator=gen(1))
    keys = torch.cat([m.push(np.array([i, 0.0]), 0, 0.0, np.zeros(2), False) for i in range(N)])
    states, *_ = m.sample(B, beta=0.4)
    frac0 = float((states[:, 0] < 10).float().mean())
    assert abs(frac0 - 0.1) < 0.02  # new rows all enter at the max priority: uniform
    # high TD errors for rows 0..9, tiny for the rest (as [B, 1], requiring grad, like the seed's)
    td = torch.full((N, 1), 0.01)
    td[:10] = -10.0  # negative TD errors: |d| is used
    td.requires_grad_(True)
    m.update_priorities(keys, td * 1)
    hi, lo = (10 + 1e-6) ** 0.6, (0.01 + 1e-6) ** 0.6
    want = 10 * hi / (10 * hi + 90 * lo)
    states, _, _, _, _, weights, idx = m.sample(B, beta=0.4)
    frac = float((states[:, 0] < 10).float().mean())
    assert abs(frac - want) < 0.02, (frac, want)
    # IS weights (p_i / p_min) ** -beta: the high-TD rows get the small weights
    sel = states[:, 0] < 10
    assert torch.allclose(weights[sel], torch.tensor((hi / lo) ** -0.4), rtol=1e-5)
    assert torch.allclose(weights[~sel], torch.tensor(1.0))
    assert torch.equal(idx, states[:, 0].long())  # keys are the insertion order here
    # numpy / list indices and td errors are accepted too; shift back to uniform
    m.update_priorities(keys.numpy().astype(np.int32), np.ones(N))
    m.update_priorities(keys[:3].tolist(), [1.0, 1.0, 1.0])
    states, *_ = m.sample(B)
    assert abs(float((states[:, 0] < 10).float().mean()) - 0.1) < 0.02


def test_memory_stale_indices_are_dropped():
    m = PrioritizedReplayMemory(16, 1, device="cpu", generator=gen(2))
    for i in range(16):
        m.push([float(i)], 0, 0.0, [0.0], False)
    *_, idx = m.sample(8)
    for i in range(16):  # overwrite every row
        m.push([100.0 + i], 0, 0.0, [0.0], False)
    before = m.buffer.tree.leaves.clone()
    m.update_priorities(idx, torch.full((8,), 1e3))
    assert torch.equal(m.buffer.tree.leaves, before)
    assert m.stats()["stale_dropped"] == 8
    # fresh indices do apply
    *_, idx = m.sample(8)
    m.update_priorities(idx, torch.full((8,), 1e3))
    assert not torch.equal(m.buffer.tree.leaves, before)


# Hand computation, gamma = 0.5, n = 3. state = [t], next_state = [t + 0.5].
#   episode A: t = 0..4, rewards 1, 2, 4, 8, 16, terminates at t = 4
#   episode B: t = 5..7, rewards 1, 1, 1, truncated at t = 7 (time limit: not terminated)
#   episode C: t = 8, 9, rewards 3, 5, unfinished (flush)
HAND = {  # t: (n-step return, next_state, discount gamma**k, terminated)
    0: (1 + 0.5 * 2 + 0.25 * 4, 2.5, 0.125, 0.0),
    1: (2 + 0.5 * 4 + 0.25 * 8, 3.5, 0.125, 0.0),
    2: (4 + 0.5 * 8 + 0.25 * 16, 4.5, 0.125, 1.0),
    3: (8 + 0.5 * 16, 4.5, 0.25, 1.0),
    4: (16.0, 4.5, 0.5, 1.0),
    5: (1 + 0.5 + 0.25, 7.5, 0.125, 0.0),
    6: (1 + 0.5, 7.5, 0.25, 0.0),   # cut short by the truncation: gamma**2, not gamma**3
    7: (1.0, 7.5, 0.5, 0.0),
    8: (3 + 0.5 * 5, 9.5, 0.25, 0.0),
    9: (5.0, 9.5, 0.5, 0.0),
}
REWARDS = [1, 2, 4, 8, 16, 1, 1, 1, 3, 5]


def test_memory_nstep_matches_hand_computation():
    m = PrioritizedReplayMemory(64, 1, device="cpu", n_step=3, gamma=0.5, generator=gen(3))
    lens = []
    for t, r in enumerate(REWARDS):
        m.push([float(t)], t, 0.1 * t, float(r), [t + 0.5], t == 4, truncated=(t == 7))
        lens.append(len(m))
    assert lens == [0, 0, 1, 2, 3, 4, 5, 6, 7, 8]  # rows come out n - 1 pushes late
    m.flush()
    assert len(m) == 10
    out = m.sample_hybrid(500, beta=0.4, return_discount=True)
    states, actions, aux, rewards, next_states, dones, weights, idx, disc = out
    seen = set()
    for i in range(500):
        t = int(states[i, 0])
        seen.add(t)
        R, nxt, g, term = HAND[t]
        assert float(rewards[i, 0]) == pytest.approx(R, abs=1e-6)
        assert float(next_states[i, 0]) == nxt and float(disc[i, 0]) == g and float(dones[i, 0]) == term
        assert int(actions[i, 0]) == t and float(aux[i, 0]) == pytest.approx(0.1 * t)
    assert seen == set(HAND)
    # the seed's target used gamma**n for every row: wrong for the truncated, cut-short rows
    assert HAND[6][2] != 0.5 ** 3 and HAND[7][2] != 0.5 ** 3


def test_memory_one_step_truncation_and_push_batch():
    m = PrioritizedReplayMemory(32, 2, device="cpu", gamma=0.9, generator=gen(4))
    keys = m.push_batch(np.arange(8, dtype=np.float32).reshape(4, 2), np.arange(4), np.ones(4),
                        np.zeros((4, 2)), np.array([0, 1, 1, 0]), truncated=np.array([0, 0, 1, 1]))
    assert keys.tolist() == [0, 1, 2, 3] and len(m) == 4
    states, actions, rewards, nxt, dones, w, idx, disc = m.sample(64, return_discount=True)
    # done wins over truncated; truncated alone is not terminal
    want_done = torch.tensor([0.0, 1.0, 1.0, 0.0])[actions[:, 0]]
    assert torch.equal(dones[:, 0], want_done) and torch.all(disc == np.float32(0.9))


def test_memory_push_batch_parallel_streams():
    """n_step > 1 with num_envs streams: row e of push_batch is env e's step."""
    m = PrioritizedReplayMemory(64, 1, device="cpu", n_step=3, gamma=0.5, num_envs=2, generator=gen(5))
    for t, r in enumerate(REWARDS):
        # env 0 follows the hand example, env 1 has doubled rewards and no episode ends
        m.push_batch(torch.tensor([[t], [100.0 + t]]), torch.tensor([t, t]), torch.tensor([r, 2.0 * r]),
                     torch.tensor([[t + 0.5], [100.5 + t]]), torch.tensor([t == 4, False]),
                     truncated=torch.tensor([t == 7, False]))
    m.flush()
    states, actions, rewards, nxt, dones, w, idx, disc = m.sample(400, return_discount=True)
    for i in range(400):
        s = float(states[i, 0])
        if s < 100:
            R, n_, g, term = HAND[int(s)]
            assert float(rewards[i, 0]) == pytest.approx(R) and float(disc[i, 0]) == g
        else:
            t = int(s) - 100
            k = min(3, 10 - t)
            R = sum(0.5 ** j * 2 * REWARDS[t + j] for j in range(k))
            assert float(rewards[i, 0]) == pytest.approx(R) and float(disc[i, 0]) == 0.5 ** k
            assert float(nxt[i, 0]) == 100.5 + t + k - 1 and float(dones[i, 0]) == 0.0


def test_memory_bad_input():
    m = PrioritizedReplayMemory(8, 3, device="cpu")
    with pytest.raises(ValueError, match="empty"):
        m.sample(4)
    with pytest.raises(ValueError, match="empty"):
        m.update_priorities(torch.tensor([0]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="state"):
        m.push(np.zeros(4), 0, 0.0, np.zeros(3), False)
    with pytest.raises(ValueError, match="next_state"):
        m.push(np.zeros(3), 0, 0.0, np.zeros(2), False)
    with pytest.raises(TypeError, match="positional"):
        m.push(np.zeros(3), 0, 0.0, np.zeros(3))
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        m.push("abc", 0, 0.0, np.zeros(3), False)
    assert m.buffer is None  # nothing was built or written by the refused calls
    m.push(np.zeros(3), 0, 0.0, np.zeros(3), False)
    with pytest.raises(TypeError, match="no continuous action"):
        m.push(np.zeros(3), 0, 0.5, 0.0, np.zeros(3), False)
    with pytest.raises(ValueError, match="no continuous actions"):
        m.sample_hybrid(2)
    with pytest.raises(TypeError, match="integer keys"):
        m.update_priorities(np.array([0.0]), np.array([1.0]))
    with pytest.raises(ValueError, match="td_errors"):
        m.update_priorities(torch.tensor([0, 0]), torch.ones(3))
    with pytest.raises(ValueError, match="beta"):
        m.sample(2, beta=2.0)
    with pytest.raises(ValueError, match="batch_size"):
        m.sample(0)
    with pytest.raises(TypeError, match="int64|dtype"):
        m.push(np.zeros(3), 1.5, 0.0, np.zeros(3), False)  # float action into int64
    assert len(m) == 1
    h = PrioritizedReplayMemory(8, 3, aux_action_size=1, device="cpu")
    with pytest.raises(TypeError, match="continuous action of size 1"):
        h.push(np.zeros(3), 0, 0.0, np.zeros(3), False)
    with pytest.raises(ValueError, match="aux_action_size"):
        h.push(np.zeros(3), 0, [0.1, 0.2], 0.0, np.zeros(3), False)
    with pytest.raises(ValueError, match="capacity"):
        PrioritizedReplayMemory(0, 3)
    with pytest.raises(ValueError, match="alpha"):
        PrioritizedReplayMemory(8, 3, alpha=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        PrioritizedReplayMemory(8, 3, gamma=1.5)
    with pytest.raises(ValueError, match="normalize"):
        PrioritizedReplayMemory(8, 3, normalize="max")
    p = PrioritizedReplayMemory(8, 1, n_step=3, num_envs=2, device="cpu")
    with pytest.raises(ValueError, match="num_envs"):
        p.push([0.0], 0, 0.0, [0.0], False)
    with pytest.raises(ValueError, match="2 rows"):
        p.push_batch(torch.zeros(3, 1), torch.zeros(3, dtype=torch.int64), torch.zeros(3), torch.zeros(3, 1),
                     torch.zeros(3, dtype=torch.bool))


@pytest.mark.cuda
def test_memory_on_cuda():
    m = PrioritizedReplayMemory(64, 4, device="cuda", n_step=3)
    for t in range(6):
        m.push(torch.randn(4), 1, 1.0, torch.randn(4), t == 5, aux_action=0.5)
    out = m.sample_hybrid(8, return_discount=True)
    assert all(t.device.type == "cuda" for t in out)
    m.update_priorities(out[-2], (out[3] - 0.5).abs())

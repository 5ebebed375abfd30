"""gpu_replay.compat: the seed agent's PrioritizedReplayMemory and Stable-Baselines3's
ReplayBuffer interface over the library's buffers.

The SB3 shapes and dtypes are written out explicitly below (from stable-baselines3 2.9.2's
common/buffers.py, preprocessing.py and type_aliases.py), so the core checks run without
SB3; when SB3 is importable the adapter is also compared with the real classes."""
import importlib.util
import pickle

import numpy as np
import pytest
import torch
from gymnasium import spaces

from gpu_replay.compat import PrioritizedReplayMemory, ReplayBufferSamples, SB3ReplayBuffer

HAS_SB3 = importlib.util.find_spec("stable_baselines3") is not None
needs_sb3 = pytest.mark.skipif(not HAS_SB3, reason="stable-baselines3 not installed (comparison only)")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# =========================================================================== seeds' memory
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


# =========================================================================== SB3
B = 64
# (observation_space, action_space, expected obs (shape, dtype), expected action (shape, dtype)),
# written from SB3 2.9.2: get_obs_shape / get_action_dim (preprocessing.py), storage dtype =
# observation_space.dtype and _maybe_cast_dtype(action_space.dtype) (float64 -> float32),
# returned through to_torch = th.tensor(array), which keeps the numpy dtype.
CASES = {
    "box-discrete": (spaces.Box(-10, 10, (4,), np.float32), spaces.Discrete(3),
                     ((4,), torch.float32), ((1,), torch.int64)),
    "image-box": (spaces.Box(0, 255, (3, 8, 8), np.uint8), spaces.Box(-1, 1, (2,), np.float32),
                  ((3, 8, 8), torch.uint8), ((2,), torch.float32)),
    "box-box64": (spaces.Box(-1, 1, (5,), np.float32), spaces.Box(-1, 1, (2, 2), np.float64),
                  ((5,), torch.float32), ((4,), torch.float32)),
    "discrete-multidiscrete": (spaces.Discrete(7), spaces.MultiDiscrete([2, 3]),
                               ((1,), torch.int64), ((2,), torch.int64)),
    "box64-multibinary": (spaces.Box(-1, 1, (3,), np.float64), spaces.MultiBinary(3),
                          ((3,), torch.float64), ((3,), torch.int8)),
}


def step_data(obs_space, act_space, n_envs, t, rng):
    """One add()'s arguments; the reward t * n_envs + e + 0.5 identifies the transition."""
    def obs():
        if isinstance(obs_space, spaces.Discrete):
            return rng.integers(0, obs_space.n, size=n_envs)  # SB3 reshapes these to [n_envs, 1]
        return np.stack([obs_space.sample() for _ in range(n_envs)])
    if isinstance(act_space, spaces.Discrete):
        action = rng.integers(0, act_space.n, size=n_envs)
    else:
        action = np.stack([act_space.sample() for _ in range(n_envs)])
    reward = (t * n_envs + np.arange(n_envs) + 0.5).astype(np.float64)
    done = rng.random(n_envs) < 0.3
    infos = [{"TimeLimit.truncated": bool(d and rng.random() < 0.5)} for d in done]
    return obs(), obs(), action, reward, done, infos


def expected_rows(args, obs_shape, action_dim, n_envs):
    obs, nobs, action, reward, done, infos = args
    timeout = np.array([i.get("TimeLimit.truncated", False) for i in infos], np.float32)
    return {int(reward[e] - 0.5): dict(obs=np.asarray(obs).reshape(n_envs, *obs_shape)[e],
                                       next_obs=np.asarray(nobs).reshape(n_envs, *obs_shape)[e],
                                       action=np.asarray(action).reshape(n_envs, action_dim)[e],
                                       done=np.float32(done[e]) * (1 - timeout[e]))
            for e in range(n_envs)}


@pytest.mark.parametrize("n_envs", [1, 4])
@pytest.mark.parametrize("case", list(CASES))
def test_sb3_shapes_dtypes_contents(case, n_envs):
    obs_space, act_space, (obs_shape, obs_dt), (act_shape, act_dt) = CASES[case]
    obs_space.seed(0), act_space.seed(0)
    rng = np.random.default_rng(0)
    rb = SB3ReplayBuffer(12, obs_space, act_space, device="cpu", n_envs=n_envs,
                         generator=gen(6))
    assert rb.buffer_size == max(12 // n_envs, 1) and rb.obs_shape == obs_shape
    assert rb.action_dim == act_shape[0] and rb.device == torch.device("cpu")
    rows = {}
    for t in range(rb.buffer_size + 2):  # wraps around
        assert rb.pos == t % rb.buffer_size and rb.full == (t >= rb.buffer_size)
        assert rb.size() == min(t, rb.buffer_size)
        args = step_data(obs_space, act_space, n_envs, t, rng)
        rows.update(expected_rows(args, obs_shape, act_shape[0], n_envs))
        rb.add(*args)
    s = rb.sample(B)
    assert isinstance(s, ReplayBufferSamples) and isinstance(s, tuple)
    assert s._fields == ("observations", "actions", "next_observations", "dones", "rewards", "discounts")
    expect = {"observations": ((B, *obs_shape), obs_dt), "actions": ((B, *act_shape), act_dt),
              "next_observations": ((B, *obs_shape), obs_dt), "dones": ((B, 1), torch.float32),
              "rewards": ((B, 1), torch.float32)}
    for name, (shape, dt) in expect.items():
        t = getattr(s, name)
        assert tuple(t.shape) == shape and t.dtype == dt and t.device.type == "cpu", name
    assert s.discounts is None
    # every sampled row is a stored transition of the last buffer_size steps, fields intact
    live = range((rb.buffer_size + 2 - rb.buffer_size) * n_envs, (rb.buffer_size + 2) * n_envs)
    for i in range(B):
        k = int(s.rewards[i, 0] - 0.5)
        assert k in live
        want = rows[k]
        assert np.array_equal(s.observations[i].numpy(), want["obs"].astype(obs_dt_np(obs_dt)))
        assert np.array_equal(s.next_observations[i].numpy(), want["next_obs"].astype(obs_dt_np(obs_dt)))
        assert np.array_equal(s.actions[i].numpy(), want["action"].astype(obs_dt_np(act_dt)))
        assert float(s.dones[i, 0]) == float(want["done"])


def obs_dt_np(dt):
    return torch.empty(0, dtype=dt).numpy().dtype


@needs_sb3
@pytest.mark.parametrize("n_envs", [1, 4])
@pytest.mark.parametrize("case", list(CASES))
def test_sb3_against_real_replay_buffer(case, n_envs):
    from stable_baselines3.common.buffers import ReplayBuffer
    obs_space, act_space, *_ = CASES[case]
    obs_space.seed(1), act_space.seed(1)
    rng = np.random.default_rng(1)
    ours = SB3ReplayBuffer(12, obs_space, act_space, device="cpu", n_envs=n_envs, generator=gen(7))
    real = ReplayBuffer(12, obs_space, act_space, device="cpu", n_envs=n_envs)
    assert (ours.buffer_size, ours.obs_shape, ours.action_dim) == (real.buffer_size, tuple(real.obs_shape),
                                                                   real.action_dim)
    for t in range(real.buffer_size + 3):
        args = step_data(obs_space, act_space, n_envs, t, rng)
        ours.add(*args)
        real.add(*args)
        assert (ours.pos, ours.full, ours.size()) == (real.pos, real.full, real.size())
    # the stored rows, in SB3's [buffer_size, n_envs, ...] layout (the ring slots line up)
    data = {k: v.reshape(real.buffer_size, n_envs, *v.shape[1:]).numpy()
            for k, v in ours.buffer.storage.data.items()}
    np.testing.assert_array_equal(data["obs"], real.observations.reshape(data["obs"].shape))
    np.testing.assert_array_equal(data["next_obs"], real.next_observations.reshape(data["next_obs"].shape))
    np.testing.assert_array_equal(data["action"], real.actions)
    np.testing.assert_array_equal(data["reward"], real.rewards)
    np.testing.assert_array_equal(data["done"], real.dones * (1 - real.timeouts))
    a, b = ours.sample(B), real.sample(B)
    assert type(a)._fields == type(b)._fields
    for x, y, name in zip(a, b, a._fields):
        if y is None:
            assert x is None, name
        else:
            assert x.shape == y.shape and x.dtype == y.dtype and x.device == y.device, name


def test_sb3_timeout_handling():
    obs_space, act_space = spaces.Box(-1, 1, (2,), np.float32), spaces.Discrete(2)
    done = np.array([True, True, False, True])
    infos = [{"TimeLimit.truncated": True}, {}, {"TimeLimit.truncated": True}, {"TimeLimit.truncated": False}]
    results = {}
    for handle in (True, False):
        rb = SB3ReplayBuffer(8, obs_space, act_space, device="cpu", n_envs=4, handle_timeout_termination=handle)
        rb.add(np.zeros((4, 2)), np.zeros((4, 2)), np.arange(4) % 2, np.arange(4), done, infos)
        results[handle] = rb.buffer.storage.data["done"][:4].tolist()
        if HAS_SB3:
            from stable_baselines3.common.buffers import ReplayBuffer
            real = ReplayBuffer(8, obs_space, act_space, device="cpu", n_envs=4, handle_timeout_termination=handle)
            real.add(np.zeros((4, 2)), np.zeros((4, 2)), np.arange(4) % 2, np.arange(4), done, infos)
            assert results[handle] == (real.dones[0] * (1 - real.timeouts[0])).tolist()
    assert results[True] == [0.0, 1.0, 0.0, 1.0]   # the time-limit end is not a termination
    assert results[False] == [1.0, 1.0, 0.0, 1.0]
    # a gymnasium vector-env info dict
    rb = SB3ReplayBuffer(8, obs_space, act_space, device="cpu", n_envs=4)
    rb.add(np.zeros((4, 2)), np.zeros((4, 2)), np.zeros(4, np.int64), np.zeros(4), done,
           {"TimeLimit.truncated": np.array([True, True, False, False]),
            "_TimeLimit.truncated": np.array([True, False, False, False])})
    assert rb.buffer.storage.data["done"][:4].tolist() == [0.0, 1.0, 0.0, 1.0]
    rb.add(np.zeros((4, 2)), np.zeros((4, 2)), np.zeros(4, np.int64), np.zeros(4), done, {})
    assert rb.buffer.storage.data["done"][4:8].tolist() == [1.0, 1.0, 0.0, 1.0]
    s = rb.sample(16)
    assert s.dones.shape == (16, 1) and s.dones.dtype == torch.float32


def test_sb3_reset_extend_pickle_to_torch():
    obs_space, act_space = spaces.Box(0, 255, (1, 4, 4), np.uint8), spaces.Box(-1, 1, (3,), np.float32)
    rb = SB3ReplayBuffer(10, obs_space, act_space, device="cpu", n_envs=2, generator=gen(8))
    T = 3
    obs = np.random.default_rng(0).integers(0, 255, (T, 2, 1, 4, 4), dtype=np.uint8)
    rb.extend(obs, obs, np.zeros((T, 2, 3), np.float32), np.ones((T, 2)), np.zeros((T, 2), bool),
              [[{}, {}]] * T)
    assert (rb.pos, rb.full, rb.size()) == (3, False, 3)
    clone = pickle.loads(pickle.dumps(rb))
    assert (clone.pos, clone.full, clone.size(), clone.buffer_size) == (3, False, 3, 5)
    for k, v in rb.buffer.storage.data.items():
        assert torch.equal(clone.buffer.storage.data[k], v)
    assert clone.sample(4).observations.dtype == torch.uint8
    rb.reset()
    assert (rb.pos, rb.full, rb.size()) == (0, False, 0)
    with pytest.raises(ValueError, match="empty"):
        rb.sample(4)
    rb.add(obs[0], obs[0], np.zeros((2, 3)), np.ones(2), np.zeros(2), [{}, {}])
    assert rb.size() == 1 and rb.sample(4).actions.shape == (4, 3)
    t = rb.to_torch(np.arange(3, dtype=np.float64))
    assert t.dtype == torch.float64 and t.device == rb.device


def test_sb3_env_normalization():
    class FakeVecNormalize:  # the two methods SB3's sample() calls on VecNormalize
        def normalize_obs(self, obs):
            return (obs * 2).astype(np.float32)

        def normalize_reward(self, reward):
            return reward / 4

    rb = SB3ReplayBuffer(8, spaces.Box(-1, 1, (2,), np.float32), spaces.Discrete(2), device="cpu")
    rb.add(np.ones((1, 2)), np.full((1, 2), 3.0), np.array([1]), np.array([2.0]), np.array([False]), [{}])
    s = rb.sample(2, env=FakeVecNormalize())
    assert torch.all(s.observations == 2) and torch.all(s.next_observations == 6)
    assert torch.all(s.rewards == 0.5) and s.rewards.dtype == torch.float32 and s.rewards.shape == (2, 1)


def test_sb3_nstep_hand_and_bad_combination():
    rb = SB3ReplayBuffer(32, spaces.Box(-100, 100, (1,), np.float32), spaces.Discrete(2), device="cpu",
                         n_steps=3, gamma=0.5, generator=gen(9))
    for t, r in enumerate(REWARDS[:8]):  # episodes A (terminated) and B (time limit)
        rb.add([[float(t)]], [[t + 0.5]], [0], [r], [t in (4, 7)], [{"TimeLimit.truncated": t == 7}])
    assert rb.size() == 8 and len(rb.buffer) == 6  # t = 6, 7 still in the window
    s = rb.sample(200)
    assert s.discounts.shape == (200, 1) and s.discounts.dtype == torch.float32
    assert s.dones.dtype == torch.float32 and s.rewards.shape == (200, 1)
    for i in range(200):
        R, nxt, g, term = HAND[int(s.observations[i, 0])]
        assert float(s.rewards[i, 0]) == pytest.approx(R) and float(s.next_observations[i, 0]) == nxt
        assert float(s.discounts[i, 0]) == g and float(s.dones[i, 0]) == term
    with pytest.raises(NotImplementedError, match="n_steps"):
        rb.sample(2, env=object())


@needs_sb3
@pytest.mark.parametrize("n_envs", [1, 2])
def test_sb3_nstep_against_real_nstep_buffer(n_envs):
    from stable_baselines3.common.buffers import NStepReplayBuffer
    obs_space, act_space = spaces.Box(-1, 1, (2,), np.float32), spaces.Box(-1, 1, (1,), np.float32)
    obs_space.seed(2), act_space.seed(2)
    rng = np.random.default_rng(2)
    n, T = 3, 40
    ours = SB3ReplayBuffer(100 * n_envs, obs_space, act_space, device="cpu", n_envs=n_envs,
                           n_steps=n, gamma=0.9)
    real = NStepReplayBuffer(100 * n_envs, obs_space, act_space, device="cpu", n_envs=n_envs,
                             n_steps=n, gamma=0.9)
    for t in range(T):
        args = step_data(obs_space, act_space, n_envs, t, rng)
        obs, nobs, action, reward, done, infos = args
        args = (obs, nobs, action, rng.normal(size=n_envs), done, infos)
        ours.add(*args)
        real.add(*args)
        assert (ours.pos, ours.full, ours.size()) == (real.pos, real.full, real.size())
    inds = np.repeat(np.arange(T - n + 1), n_envs)  # the rows whose windows are complete
    np.random.seed(0)
    env_idx = np.random.randint(0, n_envs, size=inds.shape)
    np.random.seed(0)
    want = real._get_samples(inds)
    keys = torch.as_tensor(inds * n_envs + env_idx)
    got = {k: v[keys] for k, v in ours.buffer.storage.data.items()}
    torch.testing.assert_close(got["obs"], want.observations)
    torch.testing.assert_close(got["action"], want.actions)
    torch.testing.assert_close(got["next_obs"], want.next_observations)
    torch.testing.assert_close(got["terminated"].float()[:, None], want.dones)
    torch.testing.assert_close(got["discount"][:, None], want.discounts)
    torch.testing.assert_close(got["reward"][:, None], want.rewards.float(), rtol=1e-5, atol=1e-6)


def test_sb3_bad_input():
    obs_space, act_space = spaces.Box(-1, 1, (3,), np.float32), spaces.Discrete(4)
    rb = SB3ReplayBuffer(8, obs_space, act_space, device="cpu", n_envs=2)
    ok = dict(obs=np.zeros((2, 3)), next_obs=np.zeros((2, 3)), action=np.array([1, 2]), reward=np.zeros(2),
              done=np.zeros(2, bool), infos=[{}, {}])
    with pytest.raises(ValueError, match="empty"):
        rb.sample(4)
    for key, bad, err, msg in [("obs", np.zeros((2, 4)), ValueError, "obs: expected shape"),
                               ("next_obs", np.zeros((3,)), ValueError, "next_obs"),
                               ("action", np.array([1, 2, 3]), ValueError, "action"),
                               ("action", np.array([1.0, 2.0]), TypeError, "action"),
                               ("reward", np.zeros(3), ValueError, "reward"),
                               ("done", np.zeros((2, 2)), ValueError, "done"),
                               ("infos", [{}], ValueError, "infos"),
                               ("infos", None, ValueError, "infos"),
                               ("obs", "x", TypeError, "obs")]:
        with pytest.raises(err, match=msg):
            rb.add(**{**ok, key: bad})
    assert rb.size() == 0 and len(rb.buffer) == 0  # refused calls changed nothing
    rb.add(**ok)
    assert rb.size() == 1
    with pytest.raises(ValueError, match="batch_size"):
        rb.sample(0)
    with pytest.raises(NotImplementedError, match="optimize_memory_usage"):
        SB3ReplayBuffer(8, obs_space, act_space, optimize_memory_usage=True, handle_timeout_termination=False)
    with pytest.raises(NotImplementedError, match="DictReplayBuffer"):
        SB3ReplayBuffer(8, spaces.Dict({"a": obs_space}), act_space)
    with pytest.raises(ValueError, match="n_envs"):
        SB3ReplayBuffer(8, obs_space, act_space, n_envs=0)
    with pytest.raises(ValueError, match="buffer_size"):
        SB3ReplayBuffer(0, obs_space, act_space)


def test_sb3_device_auto():
    rb = SB3ReplayBuffer(4, spaces.Box(-1, 1, (1,), np.float32), spaces.Discrete(2))  # device="auto"
    assert rb.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    rb = SB3ReplayBuffer(4, spaces.Box(-1, 1, (1,), np.float32), spaces.Discrete(2), device="cuda")
    assert rb.device.type == ("cuda" if torch.cuda.is_available() else "cpu")  # SB3's get_device fallback


@needs_sb3
@pytest.mark.parametrize("n_steps", [1, 3])
def test_sb3_dqn_trains_with_adapter(n_steps):
    """The adapter as SB3's replay_buffer_class, through DQN's real add/sample calls."""
    import warnings
    from stable_baselines3 import DQN
    from stable_baselines3.common.env_util import make_vec_env
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DQN("MlpPolicy", env, learning_starts=50, batch_size=16, train_freq=4, buffer_size=500,
                    replay_buffer_class=SB3ReplayBuffer, replay_buffer_kwargs={"n_steps": n_steps},
                    device="cpu", seed=0, policy_kwargs={"net_arch": [8]})
        model.learn(200)
    rb = model.replay_buffer
    assert isinstance(rb, SB3ReplayBuffer) and rb.size() == 100 and rb.buffer_size == 250
    assert len(rb.buffer) == 2 * (100 - (n_steps - 1))

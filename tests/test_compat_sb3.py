"""gpu_replay.compat.SB3ReplayBuffer: Stable-Baselines3's (and CleanRL's) ReplayBuffer interface.

The SB3 shapes and dtypes are written out explicitly below (from stable-baselines3 2.9.2's
common/buffers.py, preprocessing.py and type_aliases.py), so the core checks run without
SB3; when SB3 is importable the adapter is also compared with the real classes. The
observation and action spaces are gymnasium's: the module is skipped without gymnasium."""
import importlib.util
import pickle

import numpy as np
import pytest
import torch

spaces = pytest.importorskip("gymnasium").spaces

from gpu_replay.compat import ReplayBufferSamples, SB3ReplayBuffer  # noqa: E402
from test_compat_memory import HAND, REWARDS  # noqa: E402  (the hand-computed n-step rows)

HAS_SB3 = importlib.util.find_spec("stable_baselines3") is not None
needs_sb3 = pytest.mark.skipif(not HAS_SB3, reason="stable-baselines3 not installed (comparison only)")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


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

"""Stable-Baselines3's ``ReplayBuffer`` interface (also what CleanRL's single-file agents use)
over ``gpu_replay.ReplayBuffer``: swap the import.

``SB3ReplayBuffer(buffer_size, observation_space, action_space, device="auto", n_envs=1,
optimize_memory_usage=False, handle_timeout_termination=True, *, n_steps=1, gamma=0.99,
generator=None)``; usable as ``replay_buffer_class=`` of SB3's off-policy algorithms.
Shapes and dtypes follow stable-baselines3 2.9.2 (``common/buffers.py``,
``preprocessing.py``, ``type_aliases.py``):

- ``buffer_size`` becomes ``max(buffer_size // n_envs, 1)`` (steps per env), ``pos`` /
  ``full`` / ``size()`` count ``add`` calls in those units, ``reset()`` empties the buffer.
- ``add(obs, next_obs, action, reward, done, infos)``: ``obs``/``next_obs``
  ``[n_envs, *obs_shape]`` (Discrete observations are reshaped, as SB3 does), ``action``
  reshaped to ``[n_envs, action_dim]``, ``reward``/``done`` ``[n_envs]``. With
  ``handle_timeout_termination`` the stored done is ``done * (1 - timeout)``, timeout =
  ``infos[i].get("TimeLimit.truncated", False)``; ``infos`` may also be a gymnasium vector
  info dict (``infos["TimeLimit.truncated"]`` if present, else no timeouts).
  Inputs: numpy arrays, tensors (any device), scalars. ``extend(...)``: several adds.
- ``sample(batch_size, env=None)`` -> ``ReplayBufferSamples(observations, actions,
  next_observations, dones, rewards, discounts)`` on ``device``, uniform with replacement
  over the stored transitions (as SB3: uniform step, then uniform env):
  observations ``[B, *obs_shape]`` in the observation space's dtype (uint8 images stay
  uint8; Discrete: ``[B, 1]`` int64), actions ``[B, action_dim]`` in the action space's
  dtype with float64 -> float32 (Discrete: ``[B, 1]`` int64), dones and rewards
  ``[B, 1]`` float32, discounts None (``n_steps == 1``) or ``[B, 1]`` float32 gamma**k.
  ``env`` (a VecNormalize) normalizes observations and rewards as SB3 does (a host round trip).
- ``n_steps > 1`` (like SB3's ``NStepReplayBuffer``): the library's ``NStep`` with
  ``num_envs=n_envs``; a timeout (``TimeLimit.truncated``, with or without ``done``) ends
  the window without terminating; ``dones`` is the
  termination at the window's end, ``discounts`` gamma**k. Unlike SB3's (computed at
  sample time), rows appear ``n_steps - 1`` adds late.
- Pickling (``save_replay_buffer``) works through the library's ``state_dict``.

Not provided: ``optimize_memory_usage=True`` (NotImplementedError: next observations are
stored separately), Dict observation spaces (SB3's ``DictReplayBuffer``), direct numpy
attributes ``observations``/``actions``/``dones``/... (the data live in
``.buffer.storage.data`` as tensors), ``env=`` normalization together with ``n_steps > 1``.
SB3's ``load_replay_buffer`` asserts ``isinstance(..., sb3.ReplayBuffer)``, which this class
is not: unpickle it yourself and assign ``model.replay_buffer``. Dtypes that do not cast
safely (``torch.can_cast``, e.g. float actions for a Discrete space) raise TypeError where
SB3's numpy assignment would silently truncate.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch

from .._checks import as_device, check_float, check_int, numpy_casts, to_torch_dtype
from ..buffers import ReplayBuffer
from ._convert import flags, rows, tensor

__all__ = ["SB3ReplayBuffer", "ReplayBufferSamples"]


class ReplayBufferSamples(NamedTuple):
    """Same fields, order and defaults as ``stable_baselines3.common.type_aliases.ReplayBufferSamples``."""
    observations: torch.Tensor
    actions: torch.Tensor
    next_observations: torch.Tensor
    dones: torch.Tensor
    rewards: torch.Tensor
    # For n-step replay buffer
    discounts: Optional[torch.Tensor] = None


def _sb3_device(device) -> torch.device:
    """SB3's ``get_device``: "auto" -> cuda; a cuda request without CUDA falls back to cpu."""
    if isinstance(device, str) and device == "auto":
        device = "cuda"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return torch.device("cpu")
    return as_device(device)


def _obs_shape(space) -> tuple:
    from gymnasium import spaces
    if isinstance(space, spaces.Box):
        return tuple(space.shape)
    if isinstance(space, spaces.Discrete):
        return (1,)
    if isinstance(space, spaces.MultiDiscrete):
        return (len(space.nvec),)
    if isinstance(space, spaces.MultiBinary):
        return tuple(space.shape)
    if isinstance(space, spaces.Dict):
        raise NotImplementedError("SB3ReplayBuffer: Dict observation spaces need SB3's DictReplayBuffer, "
                                  "which this adapter does not provide")
    raise NotImplementedError(f"SB3ReplayBuffer: observation space {space} is not supported")


def _action_dim(space) -> int:
    from gymnasium import spaces
    if isinstance(space, spaces.Box):
        return int(np.prod(space.shape))
    if isinstance(space, spaces.Discrete):
        return 1
    if isinstance(space, spaces.MultiDiscrete):
        return len(space.nvec)
    if isinstance(space, spaces.MultiBinary):
        if not isinstance(space.n, (int, np.integer)):
            raise NotImplementedError(f"SB3ReplayBuffer: multi-dimensional MultiBinary({space.n}) action "
                                      f"space is not supported; flatten it")
        return int(space.n)
    raise NotImplementedError(f"SB3ReplayBuffer: action space {space} is not supported")


class SB3ReplayBuffer:
    """Stable-Baselines3's ``ReplayBuffer`` interface over ``gpu_replay.ReplayBuffer`` (see the
    module docstring)."""

    def __init__(self, buffer_size: int, observation_space, action_space, device="auto", n_envs: int = 1,
                 optimize_memory_usage: bool = False, handle_timeout_termination: bool = True, *,
                 n_steps: int = 1, gamma: float = 0.99, generator: torch.Generator | None = None):
        if optimize_memory_usage:
            raise NotImplementedError(
                "SB3ReplayBuffer: optimize_memory_usage=True is not implemented (next observations are "
                "stored in their own tensor, so the buffer takes the memory of SB3's default variant); "
                "pass optimize_memory_usage=False")
        buffer_size = check_int(buffer_size, "buffer_size", 1)
        self.n_envs = check_int(n_envs, "n_envs", 1, 2 ** 31 - 1)
        self.observation_space = observation_space
        self.action_space = action_space
        self.obs_shape = _obs_shape(observation_space)
        self.action_dim = _action_dim(action_space)
        self.device = _sb3_device(device)
        self.buffer_size = max(buffer_size // self.n_envs, 1)
        self.optimize_memory_usage = False
        self.handle_timeout_termination = bool(handle_timeout_termination)
        self.n_steps = check_int(n_steps, "n_steps", 1, 2 ** 16)
        self.gamma = check_float(gamma, "gamma", 0.0, 1.0)
        self.obs_dtype = to_torch_dtype(observation_space.dtype, "observation_space.dtype")
        act_dt = action_space.dtype
        self.action_dtype = to_torch_dtype(np.float32 if act_dt == np.float64 else act_dt, "action_space.dtype")
        self.generator = generator
        self._make()

    def _make(self) -> None:
        cap = self.buffer_size * self.n_envs
        obs = (self.obs_shape, self.obs_dtype)
        act = ((self.action_dim,), self.action_dtype)
        if self.n_steps > 1:
            self.buffer = ReplayBuffer(cap, {"obs": obs, "action": act}, self.device, self.generator,
                                       n_step=self.n_steps, gamma=self.gamma, num_envs=self.n_envs,
                                       autoreset_mode="disabled")
        else:
            self.buffer = ReplayBuffer(cap, {"obs": obs, "next_obs": obs, "action": act,
                                             "reward": ((), torch.float32), "done": ((), torch.float32)},
                                       self.device, self.generator)
        self._calls = 0
        self._views = self._host_views()
        self._obs_full = (self.n_envs, *self.obs_shape)

    # ------------------------------------------------------------------ SB3 bookkeeping
    @property
    def pos(self) -> int:
        return self._calls % self.buffer_size

    @property
    def full(self) -> bool:
        return self._calls >= self.buffer_size

    def size(self) -> int:
        return self.buffer_size if self.full else self.pos

    def reset(self) -> None:
        """Empty the buffer (and any pending n-step windows); ``pos = 0``, ``full = False``."""
        self.buffer.clear()
        self._calls = 0

    def to_torch(self, array, copy: bool = True) -> torch.Tensor:
        return torch.tensor(array, device=self.device) if copy else torch.as_tensor(array, device=self.device)

    # ------------------------------------------------------------------ add
    def _timeouts(self, infos, n: int) -> torch.Tensor:
        if not self.handle_timeout_termination:
            return torch.zeros(n, dtype=torch.bool)
        if isinstance(infos, dict):  # a gymnasium vector-env info dict
            if "TimeLimit.truncated" not in infos:
                return torch.zeros(n, dtype=torch.bool)
            t = flags(infos["TimeLimit.truncated"], 'add: infos["TimeLimit.truncated"]', n)
            if "_TimeLimit.truncated" in infos:
                t = t & flags(infos["_TimeLimit.truncated"], 'add: infos["_TimeLimit.truncated"]', n)
            return t
        if not isinstance(infos, (list, tuple)) or len(infos) != n:
            got = f"{type(infos).__name__} of length {len(infos)}" if isinstance(infos, (list, tuple)) \
                else type(infos).__name__
            raise ValueError(f"add: infos: expected a list of {n} dicts (one per env, n_envs={n}) or a "
                             f"gymnasium info dict, got {got}")
        if not all(isinstance(i, dict) for i in infos):
            raise TypeError("add: infos: expected dicts (one per env)")
        return torch.tensor([bool(i.get("TimeLimit.truncated", False)) for i in infos], dtype=torch.bool)

    def _check_obs(self, value, what: str) -> torch.Tensor:
        from gymnasium import spaces
        reshape = isinstance(self.observation_space, spaces.Discrete)  # as SB3 does
        return rows(value, what, self.n_envs, self.obs_shape, allow_reshape=reshape)

    def _host_views(self):
        """The CPU fast path's targets: the storage's numpy fields as [buffer_size, n_envs, ...]
        (row e of add number t is key t * n_envs + e, as SB3's [pos, env] layout), and the
        numpy dtypes each accepts as they are. None off the host path or with n-step."""
        store = self.buffer.storage
        if self.n_steps > 1 or store.path != "host" or len(store.np) != len(store.spec):
            return None
        views = {k: a.reshape(self.buffer_size, self.n_envs, *a.shape[1:]) for k, a in store.np.items()}
        ok = {k: numpy_casts(dt) for k, (_, dt) in store.spec.items()}
        return views, ok

    def _fast_add(self, obs, next_obs, action, reward, done, infos) -> bool:
        """``add`` of numpy arrays on the CPU, as SB3 does it: one numpy assignment per field at the
        storage's next rows, then the key counter; False (nothing done) for anything else."""
        if self._views is None:
            return False
        views, ok = self._views
        n = self.n_envs
        for a in (obs, next_obs, action, reward, done):
            if type(a) is not np.ndarray:
                return False
        if obs.shape != self._obs_full or next_obs.shape != self._obs_full or obs.dtype not in ok["obs"] or \
                next_obs.dtype not in ok["obs"] or action.size != n * self.action_dim or \
                action.dtype not in ok["action"] or reward.size != n or reward.dtype not in ok["reward"] or \
                done.size != n or done.dtype not in ok["done"]:
            return False
        if not self.handle_timeout_termination:
            d = done.reshape(n)
        elif type(infos) is list and len(infos) == n and all(type(i) is dict for i in infos):
            d = done.reshape(n) * np.array([not i.get("TimeLimit.truncated", False) for i in infos], np.float32)
        else:
            return False
        counter = self.buffer.sampler.counter
        row = int(counter.np[0]) % (self.buffer_size * n) // n
        views["obs"][row] = obs
        views["next_obs"][row] = next_obs
        views["action"][row] = action.reshape(n, self.action_dim)
        views["reward"][row] = reward.reshape(n)
        views["done"][row] = d
        counter.np[0] += n  # the rows' keys: the same as ReplayBuffer.add would hand out
        counter.seen_rows = True
        self._calls += 1
        return True

    def add(self, obs, next_obs, action, reward, done, infos) -> None:
        if self._fast_add(obs, next_obs, action, reward, done, infos):
            return
        n = self.n_envs
        o = self._check_obs(obs, "add: obs")
        no = self._check_obs(next_obs, "add: next_obs")
        a = rows(action, "add: action", n, (self.action_dim,), allow_reshape=True)
        r = rows(reward, "add: reward", n, (), allow_reshape=True)
        if not torch.can_cast(r.dtype, torch.float32):
            raise TypeError(f"add: reward: expected a numeric dtype, got {r.dtype}")
        d = rows(done, "add: done", n, (), allow_reshape=True)
        if d.dtype != torch.bool and not torch.can_cast(d.dtype, torch.float32):
            raise TypeError(f"add: done: expected bools or numbers, got {d.dtype}")
        timeout = self._timeouts(infos, n)
        if self.n_steps > 1:
            # as SB3's NStepReplayBuffer: a timeout ends the window (with or without done) and
            # the row still bootstraps; a done without timeout terminates
            dflag = d if d.dtype == torch.bool else d != 0
            to = timeout.to(dflag.device)
            self.buffer.step(o, a, r, no, dflag & ~to, to)
        else:
            # SB3: dones * (1 - timeouts), both float32
            d32 = d.to(torch.float32)
            d32 = d32 * (1.0 - timeout.to(device=d32.device, dtype=torch.float32))
            self.buffer.add({"obs": o, "next_obs": no, "action": a, "reward": r.to(torch.float32),
                             "done": d32})
        self._calls += 1

    def extend(self, *args) -> None:
        """SB3's ``extend``: each argument has a leading time dim; one ``add`` per step."""
        for data in zip(*args, strict=True):
            self.add(*data)

    # ------------------------------------------------------------------ sample
    def sample(self, batch_size: int, env=None) -> ReplayBufferSamples:
        if self.n_steps > 1 and env is not None:
            raise NotImplementedError("SB3ReplayBuffer: env= (VecNormalize) with n_steps > 1 is not supported: "
                                      "rewards are summed when stored, SB3 normalizes each step's reward")
        b = self.buffer.sample(batch_size)
        obs, next_obs, rew = b["obs"], b["next_obs"], b["reward"].unsqueeze(1)
        if self.n_steps > 1:
            done = b["terminated"].to(torch.float32).unsqueeze(1)
            disc = b["discount"].unsqueeze(1)
        else:
            done, disc = b["done"].unsqueeze(1), None
        if env is not None:  # SB3's _normalize_obs / _normalize_reward, on the host
            obs = torch.as_tensor(env.normalize_obs(obs.cpu().numpy()), device=self.device)
            next_obs = torch.as_tensor(env.normalize_obs(next_obs.cpu().numpy()), device=self.device)
            rew = torch.as_tensor(env.normalize_reward(rew.cpu().numpy()).astype(np.float32), device=self.device)
        return ReplayBufferSamples(obs, b["action"], next_obs, done, rew, disc)

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in ("buffer", "generator", "_views")}
        state["has_generator"] = self.generator is not None
        state["buffer_state"] = self.buffer.state_dict()
        return state

    def __setstate__(self, state: dict) -> None:
        sd = state.pop("buffer_state")
        has_gen = state.pop("has_generator")
        calls = state["_calls"]
        self.__dict__.update(state)
        self.device = _sb3_device(self.device)
        self.generator = torch.Generator(self.device) if has_gen else None
        self._make()
        self.buffer.load_state_dict(sd)
        self._calls = calls

    def __repr__(self) -> str:
        return (f"SB3ReplayBuffer(buffer_size={self.buffer_size}, n_envs={self.n_envs}, "
                f"obs_shape={self.obs_shape}, action_dim={self.action_dim}, n_steps={self.n_steps}, "
                f"device={str(self.device)!r}, size={self.size()})")

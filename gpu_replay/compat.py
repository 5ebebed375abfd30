"""Drop-in adapters over the library's buffers for two existing replay-memory interfaces.

Both are thin: storage, sampling, priorities and n-step returns are the library's
(``PrioritizedReplayBuffer``/``ReplayBuffer``/``NStep``); the adapters only translate the
call signatures, shapes and dtypes.

``PrioritizedReplayMemory``: the seed agent's memory API
---------------------------------------------------------

``PrioritizedReplayMemory(capacity, state_size, alpha=0.6, eps=1e-6, device=None, n_step=1,
gamma=0.99, aux_action_size=None, state_dtype=torch.float32, action_shape=(),
action_dtype=torch.int64, num_envs=1, normalize="global", backend="auto", generator=None,
strict=False)``

- ``push(state, action, reward, next_state, done)`` or, with a continuous action as the
  seed's ``agent.step`` calls it, ``push(state, discrete_action, continuous_action, reward,
  next_state, done)``: one transition (numpy arrays, tensors on any device, Python scalars).
  Keyword-only ``truncated=False``: the episode was cut (time limit, disconnect) without
  terminating: it ends the n-step window but the target still bootstraps.
  Returns the keys of the rows that went in (int64 tensor), or None while n-step windows fill.
- ``push_batch(states, actions, [aux_actions,] rewards, next_states, dones, *, truncated=None)``:
  the same with a leading batch dim. With ``n_step == 1`` the rows are any B independent
  transitions; with ``n_step > 1`` row e is env e's step of ``num_envs`` parallel streams
  (B must equal ``num_envs``), and ``push`` needs ``num_envs == 1``.
- ``sample(batch_size, beta=0.4, return_discount=False)`` -> ``(states, actions, rewards,
  next_states, dones, weights, indices)``, all on the memory's device:

  states, next_states ``[B, *state_shape]`` state_dtype; actions ``[B, 1]`` action_dtype
  (``[B, *action_shape]`` for non-scalar actions); rewards ``[B, 1]`` float32 (the n-step
  return); dones ``[B, 1]`` float32, 1.0 = *terminated*; weights ``[B, 1]`` float32 IS
  weights; indices ``[B]`` int64 keys for ``update_priorities``; with
  ``return_discount=True`` also discounts ``[B, 1]`` float32 gamma**k, last.

  ``sample_hybrid(batch_size, beta=0.4, return_discount=False)`` -> ``(states,
  discrete_actions, continuous_actions [B, aux_action_size] float32, rewards, next_states,
  dones, weights, indices)`` (+ discounts). ``sample_batch(batch_size, beta)`` returns the
  library's ``Batch`` itself.
- ``update_priorities(indices, td_errors)``: raw TD errors (tensor ``[B]`` or ``[B, 1]``, may
  require grad, any device; or numpy / lists); p = (|d| + eps) ** alpha. Indices whose rows
  were overwritten since they were sampled are dropped (counted in ``stats()``).
- ``len(memory)``: stored transitions. ``flush()``: with n_step > 1, store the transitions
  still waiting in the windows (call it when a stream stops without a done).

The n-step target. With ``n_step > 1`` the memory runs the library's ``NStep``
(``num_envs`` streams, autoreset ``"disabled"``: every push is a real transition, ``done``
ends the episode and the next push starts a new one). A row's reward is
``sum_{j<k} gamma**j r_{t+j}`` where k = n, or fewer when the episode ended (terminated or
truncated) inside the window; ``next_states`` is the state after step t+k-1 and ``dones``
says whether the episode *terminated* there. The correct target is therefore::

    target = rewards + discounts * (1 - dones) * max_a Q_target(next_states, a)

with ``discounts = gamma**k`` from ``sample(..., return_discount=True)``. The seed used
``gamma**n`` for every row: wrong for every row that is cut short (k < n) and still
bootstraps -- cut by ``truncated=True`` or by ``flush()`` -- which would be discounted with
the wrong power; for terminated rows ``1 - dones`` is 0 and the power does not matter.
With ``n_step == 1`` the discount is ``gamma`` for every row.
A transition comes out n - 1 pushes after it went in (the window must fill), also when an
episode ends; so ``len`` lags the pushes by n - 1 until ``flush()``. Pushes from several
independent streams (e.g. game clients) must not be interleaved into one n-step stream:
give each its own env index via ``push_batch`` with ``num_envs``, or do n-step upstream and
keep ``n_step=1`` here.

``aux_action_size=None`` (the default) decides at the first push: a 6-argument push gives
an ``aux_action`` field of the size of the continuous action given, a 5-argument push none.
An explicit int (0 = none) fixes it at construction. Either way the other form of push is
then refused with a clear error, and the underlying buffer is allocated when the field
layout is known (construction, or the first push for ``None``).
``device=None`` means CUDA when available, else CPU. IS weights are normalized by the
global max (``normalize="global"``, i.e. (p_i / p_min) ** -beta), not the batch max: pass
``normalize="batch"`` for the latter. An empty memory raises ValueError in ``sample`` (the
library samples with replacement, so any batch_size >= 1 works once a row is stored).

``SB3ReplayBuffer``: Stable-Baselines3's ``ReplayBuffer`` (also what CleanRL uses)
-----------------------------------------------------------------------------------

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
  ``num_envs=n_envs``; a timeout ends the window without terminating; ``dones`` is the
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

import threading
from typing import NamedTuple, Optional

import numpy as np
import torch

from ._storage import as_device, check_float, check_int, to_torch_dtype
from .buffers import Batch, PrioritizedReplayBuffer, ReplayBuffer

__all__ = ["PrioritizedReplayMemory", "SB3ReplayBuffer", "ReplayBufferSamples"]


# ----------------------------------------------------------------------------- helpers
def _tensor(value, what: str) -> torch.Tensor:
    """A tensor (no device move) from a tensor, numpy array, numpy/Python scalar or list."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if value is None:
        raise TypeError(f"{what}: expected a tensor, array or number, got None")
    if isinstance(value, (list, tuple)):
        try:
            value = np.asarray(value)
        except ValueError as e:
            raise ValueError(f"{what}: could not make an array of {type(value).__name__}: {e}") from None
    if isinstance(value, (bool, int, float, np.generic)):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{what}: expected a torch.Tensor, numpy.ndarray or number, got "
                        f"{type(value).__name__}")
    if value.dtype == object or not (value.dtype.kind in "biuf"):
        raise TypeError(f"{what}: expected a numeric array, got numpy dtype {value.dtype}")
    # (np.ascontiguousarray would turn a 0-d array into a 1-d one)
    return torch.from_numpy(value if value.flags.c_contiguous else np.ascontiguousarray(value))


def _rows(value, what: str, n: int, shape: tuple, allow_reshape: bool = False) -> torch.Tensor:
    """``value`` as ``[n, *shape]``; ``allow_reshape`` accepts any layout with that many elements."""
    t = _tensor(value, what)
    want = (n, *shape)
    if tuple(t.shape) == want:
        return t
    if allow_reshape and t.numel() == int(np.prod(want)):
        return t.reshape(want)
    raise ValueError(f"{what}: expected shape {list(want)}, got {list(t.shape)}")


def _flags(value, what: str, n: int) -> torch.Tensor:
    """``[n]`` bool from bools or numbers (nonzero = True); [n, 1] is accepted too."""
    t = _rows(value, what, n, (), allow_reshape=True)
    return t if t.dtype == torch.bool else t != 0


def _shape(size, what: str) -> tuple:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        return (check_int(size, what, 1),)
    try:
        shape = tuple(size)
    except TypeError:
        raise TypeError(f"{what}: expected an int or a tuple of ints, got {size!r}") from None
    for s in shape:
        check_int(s, what, 1)
    return tuple(int(s) for s in shape)


def _default_device(device) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return as_device(device)


# ----------------------------------------------------------------------------- seeds
class PrioritizedReplayMemory:
    """The seed agent's ``PrioritizedReplayMemory`` over ``PrioritizedReplayBuffer`` (see the
    module docstring for the API, the shapes and the n-step target)."""

    def __init__(self, capacity: int, state_size, alpha: float = 0.6, eps: float = 1e-6, device=None,
                 n_step: int = 1, gamma: float = 0.99, aux_action_size: int | None = None,
                 state_dtype=torch.float32, action_shape=(), action_dtype=torch.int64,
                 num_envs: int = 1, normalize: str = "global", backend: str = "auto",
                 generator: torch.Generator | None = None, strict: bool = False):
        self.capacity = check_int(capacity, "capacity", 1, 2 ** 40)
        self.state_shape = _shape(state_size, "state_size")
        self.state_dtype = to_torch_dtype(state_dtype, "state_dtype")
        self.action_shape = () if action_shape in ((), None) else _shape(action_shape, "action_shape")
        self.action_dtype = to_torch_dtype(action_dtype, "action_dtype")
        self.n_step = check_int(n_step, "n_step", 1, 2 ** 16)
        self.gamma = check_float(gamma, "gamma", 0.0, 1.0)
        self.num_envs = check_int(num_envs, "num_envs", 1, 2 ** 31 - 1)
        self.device = _default_device(device)
        if aux_action_size is not None:
            aux_action_size = check_int(aux_action_size, "aux_action_size", 0)
        self._kwargs = dict(device=self.device, alpha=alpha, eps=eps, backend=backend,
                            generator=generator, normalize=normalize, strict=strict)
        self.aux_action_size = aux_action_size
        self.buffer: PrioritizedReplayBuffer | None = None
        self._build_lock = threading.Lock()
        if aux_action_size is not None:
            self._build(aux_action_size)
        else:  # built at the first push: check alpha/eps/normalize/backend now on a 1-row buffer
            PrioritizedReplayBuffer(1, {"x": ((), torch.float32)}, **{**self._kwargs, "generator": None})

    # ------------------------------------------------------------------ layout
    def _build(self, aux: int) -> None:
        spec = {"obs": (self.state_shape, self.state_dtype), "action": (self.action_shape, self.action_dtype)}
        if aux:
            spec["aux_action"] = ((aux,), torch.float32)
        if self.n_step > 1:
            self.buffer = PrioritizedReplayBuffer(self.capacity, spec, n_step=self.n_step, gamma=self.gamma,
                                                  num_envs=self.num_envs, autoreset_mode="disabled",
                                                  **self._kwargs)
        else:
            spec.update(reward=((), torch.float32), next_obs=(self.state_shape, self.state_dtype),
                        terminated=((), torch.bool))
            self.buffer = PrioritizedReplayBuffer(self.capacity, spec, **self._kwargs)
        self.aux_action_size = aux

    @property
    def has_aux(self) -> bool:
        return bool(self.aux_action_size)

    @property
    def alpha(self) -> float:
        return self._kwargs["alpha"]

    @property
    def eps(self) -> float:
        return self._kwargs["eps"]

    def __len__(self) -> int:
        return 0 if self.buffer is None else len(self.buffer)

    def __repr__(self) -> str:
        return (f"PrioritizedReplayMemory(capacity={self.capacity}, state_shape={self.state_shape}, "
                f"n_step={self.n_step}, gamma={self.gamma}, aux_action_size={self.aux_action_size}, "
                f"device={str(self.device)!r}, len={len(self)})")

    # ------------------------------------------------------------------ push
    @staticmethod
    def _split(args, kw_aux, what):
        if len(args) == 4:
            aux, (rew, nxt, done) = args[0], args[1:]
            if kw_aux is not None:
                raise TypeError(f"{what}: continuous action given both positionally and as aux_action=")
        elif len(args) == 3:
            aux, (rew, nxt, done) = kw_aux, args
        else:
            raise TypeError(f"{what}: expected (state, action, reward, next_state, done) or (state, "
                            f"discrete_action, continuous_action, reward, next_state, done), got "
                            f"{len(args) + 2} positional arguments")
        return aux, rew, nxt, done

    def push(self, state, action, *args, aux_action=None, truncated=False):
        """One transition: ``push(state, action, reward, next_state, done)`` or
        ``push(state, discrete_action, continuous_action, reward, next_state, done)``.
        Returns the keys of the rows stored by this call (None while n-step windows fill)."""
        aux, rew, nxt, done = self._split(args, aux_action, "push")
        if self.n_step > 1 and self.num_envs != 1:
            raise ValueError(f"push: this memory runs {self.num_envs} n-step streams (num_envs); "
                             f"use push_batch with one row per env")
        st = _tensor(state, "push: state")
        if tuple(st.shape) != self.state_shape:
            raise ValueError(f"push: state: expected shape {list(self.state_shape)} (state_size), "
                             f"got {list(st.shape)}")
        nx = _tensor(nxt, "push: next_state")
        if tuple(nx.shape) != self.state_shape:
            raise ValueError(f"push: next_state: expected shape {list(self.state_shape)} (state_size), "
                             f"got {list(nx.shape)}")
        a = _tensor(action, "push: action")
        if tuple(a.shape) != self.action_shape:
            raise ValueError(f"push: action: expected shape {list(self.action_shape)}, got {list(a.shape)}")
        if aux is not None:
            aux = _tensor(aux, "push: continuous_action").reshape(1, -1)
        return self._push(st[None], a[None], aux, _rows(rew, "push: reward", 1, (), True),
                          nx[None], _flags(done, "push: done", 1), _flags(truncated, "push: truncated", 1),
                          "push")

    def push_batch(self, states, actions, *args, aux_actions=None, truncated=None):
        """B transitions at once (``n_step == 1``), or one step of each of the ``num_envs``
        streams (``n_step > 1``); same argument forms as ``push`` with a leading batch dim."""
        aux, rew, nxt, done = self._split(args, aux_actions, "push_batch")
        st = _tensor(states, "push_batch: states")
        if st.dim() != len(self.state_shape) + 1 or tuple(st.shape[1:]) != self.state_shape:
            raise ValueError(f"push_batch: states: expected shape [B, {', '.join(map(str, self.state_shape))}], "
                             f"got {list(st.shape)}")
        B = st.shape[0]
        if self.n_step > 1 and B != self.num_envs:
            raise ValueError(f"push_batch: with n_step > 1 each row is one env's step: expected "
                             f"{self.num_envs} rows (num_envs), got {B}")
        a = _rows(actions, "push_batch: actions", B, self.action_shape, allow_reshape=self.action_shape == ())
        if aux is not None:
            aux = _tensor(aux, "push_batch: continuous_actions")
            if aux.dim() == 1:
                aux = aux[:, None]
            if aux.dim() != 2 or aux.shape[0] != B:
                raise ValueError(f"push_batch: continuous_actions: expected shape [{B}, k], got {list(aux.shape)}")
        trunc = torch.zeros(B, dtype=torch.bool) if truncated is None else _flags(truncated, "push_batch: truncated", B)
        return self._push(st, a, aux, _rows(rew, "push_batch: rewards", B, (), True),
                          _rows(nxt, "push_batch: next_states", B, self.state_shape),
                          _flags(done, "push_batch: dones", B), trunc, "push_batch")

    def _push(self, st, a, aux, rew, nx, done, trunc, what):
        if self.buffer is None:
            with self._build_lock:
                if self.buffer is None:
                    self._build(0 if aux is None else aux.shape[1])
        if aux is None and self.has_aux:
            raise TypeError(f"{what}: this memory stores a continuous action of size {self.aux_action_size} "
                            f"(aux_action_size); pass (state, discrete_action, continuous_action, reward, "
                            f"next_state, done)")
        if aux is not None:
            if not self.has_aux:
                raise TypeError(f"{what}: this memory has no continuous action field (aux_action_size=0, or "
                                f"the first push had none); pass (state, action, reward, next_state, done) "
                                f"or construct with aux_action_size=k")
            if aux.shape[1] != self.aux_action_size:
                raise ValueError(f"{what}: continuous action: expected {self.aux_action_size} value(s) per "
                                 f"transition (aux_action_size), got {aux.shape[1]}")
        extra = {} if aux is None else {"aux_action": aux}
        if self.n_step > 1:
            return self.buffer.step(st, a, rew, nx, done, trunc, **extra)
        # one step: the row is the transition itself; a truncation only means "not terminated"
        return self.buffer.add({"obs": st, "action": a, **extra, "reward": rew, "next_obs": nx,
                                "terminated": done})

    def flush(self):
        """Store the transitions still waiting in the n-step windows (their returns cut at
        the last push); returns their keys or None. A no-op for n_step == 1."""
        if self.buffer is None or self.n_step == 1:
            return None
        return self.buffer.flush()

    # ------------------------------------------------------------------ sample
    def sample_batch(self, batch_size: int, beta: float = 0.4) -> Batch:
        """The library's ``Batch`` (fields obs, action, [aux_action], reward, next_obs,
        terminated, [discount]; ``keys``, ``weights``, ``priorities``)."""
        if self.buffer is None:
            raise ValueError("sample: the memory is empty; push transitions first")
        return self.buffer.sample(batch_size, beta)

    def _tuple(self, b: Batch, hybrid: bool, return_discount: bool):
        act = b["action"]
        if self.action_shape == ():
            act = act.unsqueeze(1)
        out = [b["obs"], act]
        if hybrid:
            out.append(b["aux_action"])
        out += [b["reward"].unsqueeze(1), b["next_obs"], b["terminated"].to(torch.float32).unsqueeze(1),
                b.weights.unsqueeze(1), b.keys]
        if return_discount:
            if "discount" in b:
                out.append(b["discount"].unsqueeze(1))
            else:
                out.append(torch.full((len(b), 1), self.gamma, dtype=torch.float32, device=self.device))
        return tuple(out)

    def sample(self, batch_size: int, beta: float = 0.4, return_discount: bool = False):
        """``(states, actions, rewards, next_states, dones, weights, indices)`` (+ ``discounts``
        with ``return_discount=True``); see the module docstring for shapes and the target."""
        return self._tuple(self.sample_batch(batch_size, beta), False, return_discount)

    def sample_hybrid(self, batch_size: int, beta: float = 0.4, return_discount: bool = False):
        """``(states, discrete_actions, continuous_actions, rewards, next_states, dones,
        weights, indices)`` (+ ``discounts``)."""
        if self.buffer is not None and not self.has_aux:
            raise ValueError("sample_hybrid: this memory stores no continuous actions; use sample(), or "
                             "construct with aux_action_size=k and push them")
        return self._tuple(self.sample_batch(batch_size, beta), True, return_discount)

    # ------------------------------------------------------------------ priorities
    def update_priorities(self, indices, td_errors) -> None:
        """p = (|td| + eps) ** alpha for the sampled ``indices``; stale ones are dropped."""
        if self.buffer is None:
            raise ValueError("update_priorities: the memory is empty; nothing was sampled from it")
        keys = _tensor(indices, "update_priorities: indices")
        if keys.dtype != torch.int64:
            if keys.is_floating_point() or keys.dtype == torch.bool:
                raise TypeError(f"indices: expected integer keys (the indices sample() returned), got {keys.dtype}")
            keys = keys.to(torch.int64)
        td = _tensor(td_errors, "update_priorities: td_errors")
        if not td.is_floating_point():
            td = td.to(torch.float32)
        if keys.dim() == 1 and td.dim() == 0 and keys.shape[0] == 1:
            td = td.reshape(1)
        self.buffer.update_priorities(keys, td)

    def stats(self) -> dict:
        """The library's counters (``sanitized``, ``stale_dropped``, ...); reads the device."""
        if self.buffer is None:
            return {"sanitized": 0, "stale_dropped": 0}
        return self.buffer.stats()


# ----------------------------------------------------------------------------- SB3
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
            t = _flags(infos["TimeLimit.truncated"], 'add: infos["TimeLimit.truncated"]', n)
            if "_TimeLimit.truncated" in infos:
                t = t & _flags(infos["_TimeLimit.truncated"], 'add: infos["_TimeLimit.truncated"]', n)
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
        return _rows(value, what, self.n_envs, self.obs_shape, allow_reshape=reshape)

    def add(self, obs, next_obs, action, reward, done, infos) -> None:
        n = self.n_envs
        o = self._check_obs(obs, "add: obs")
        no = self._check_obs(next_obs, "add: next_obs")
        a = _rows(action, "add: action", n, (self.action_dim,), allow_reshape=True)
        r = _rows(reward, "add: reward", n, (), allow_reshape=True)
        if not torch.can_cast(r.dtype, torch.float32):
            raise TypeError(f"add: reward: expected a numeric dtype, got {r.dtype}")
        d = _rows(done, "add: done", n, (), allow_reshape=True)
        if d.dtype != torch.bool and not torch.can_cast(d.dtype, torch.float32):
            raise TypeError(f"add: done: expected bools or numbers, got {d.dtype}")
        timeout = self._timeouts(infos, n)
        if self.n_steps > 1:
            dflag = d if d.dtype == torch.bool else d != 0
            to = timeout.to(dflag.device)
            self.buffer.step(o, a, r, no, dflag & ~to, dflag & to)
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
        state = {k: v for k, v in self.__dict__.items() if k not in ("buffer", "generator")}
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

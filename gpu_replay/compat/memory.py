"""The ``PrioritizedReplayMemory`` interface: ``push`` / ``sample(batch, beta)`` /
``update_priorities(indices, td_errors)``, as in many PER agents and tutorials (the agent in
``shared/seeds`` among them), over ``gpu_replay.PrioritizedReplayBuffer``.

``PrioritizedReplayMemory(capacity, state_size, alpha=0.6, eps=1e-6, device=None, n_step=1,
gamma=0.99, aux_action_size=None, state_dtype=torch.float32, action_shape=(),
action_dtype=torch.int64, num_envs=1, normalize="batch", backend="auto", generator=None,
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
batch's max weight (``normalize="batch"``, i.e. (p_i / min_batch p) ** -beta, in (0, 1] with
1 for the batch's least likely row), as agents written against this API do; pass
``normalize="global"`` to divide by the max over the whole buffer ((p_i / p_min) ** -beta,
Schaul et al.'s choice; with spread-out priorities most weights are then far below 1). An
empty memory raises ValueError in ``sample`` (the library samples with replacement, so any
batch_size >= 1 works once a row is stored).
"""
from __future__ import annotations

import threading

import numpy as np
import torch

from .._checks import check_float, check_int, to_torch_dtype
from ..buffers import Batch, PrioritizedReplayBuffer
from ._convert import default_device, flags, rows, shape_of, tensor

__all__ = ["PrioritizedReplayMemory"]


class PrioritizedReplayMemory:
    """The ``PrioritizedReplayMemory`` API over ``PrioritizedReplayBuffer`` (see the module
    docstring for the API, the shapes and the n-step target)."""

    def __init__(self, capacity: int, state_size, alpha: float = 0.6, eps: float = 1e-6, device=None,
                 n_step: int = 1, gamma: float = 0.99, aux_action_size: int | None = None,
                 state_dtype=torch.float32, action_shape=(), action_dtype=torch.int64,
                 num_envs: int = 1, normalize: str = "batch", backend: str = "auto",
                 generator: torch.Generator | None = None, strict: bool = False):
        self.capacity = check_int(capacity, "capacity", 1, 2 ** 40)
        self.state_shape = shape_of(state_size, "state_size")
        self.state_dtype = to_torch_dtype(state_dtype, "state_dtype")
        self.action_shape = () if action_shape in ((), None) else shape_of(action_shape, "action_shape")
        self.action_dtype = to_torch_dtype(action_dtype, "action_dtype")
        self.n_step = check_int(n_step, "n_step", 1, 2 ** 16)
        self.gamma = check_float(gamma, "gamma", 0.0, 1.0)
        self.num_envs = check_int(num_envs, "num_envs", 1, 2 ** 31 - 1)
        self.device = default_device(device)
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
        st = tensor(state, "push: state")
        if tuple(st.shape) != self.state_shape:
            raise ValueError(f"push: state: expected shape {list(self.state_shape)} (state_size), "
                             f"got {list(st.shape)}")
        nx = tensor(nxt, "push: next_state")
        if tuple(nx.shape) != self.state_shape:
            raise ValueError(f"push: next_state: expected shape {list(self.state_shape)} (state_size), "
                             f"got {list(nx.shape)}")
        a = tensor(action, "push: action")
        if tuple(a.shape) != self.action_shape:
            raise ValueError(f"push: action: expected shape {list(self.action_shape)}, got {list(a.shape)}")
        if aux is not None:
            aux = tensor(aux, "push: continuous_action").reshape(1, -1)
        return self._push(st[None], a[None], aux, rows(rew, "push: reward", 1, (), True),
                          nx[None], flags(done, "push: done", 1), flags(truncated, "push: truncated", 1),
                          "push")

    def push_batch(self, states, actions, *args, aux_actions=None, truncated=None):
        """B transitions at once (``n_step == 1``), or one step of each of the ``num_envs``
        streams (``n_step > 1``); same argument forms as ``push`` with a leading batch dim."""
        aux, rew, nxt, done = self._split(args, aux_actions, "push_batch")
        st = tensor(states, "push_batch: states")
        if st.dim() != len(self.state_shape) + 1 or tuple(st.shape[1:]) != self.state_shape:
            raise ValueError(f"push_batch: states: expected shape [B, {', '.join(map(str, self.state_shape))}], "
                             f"got {list(st.shape)}")
        B = st.shape[0]
        if self.n_step > 1 and B != self.num_envs:
            raise ValueError(f"push_batch: with n_step > 1 each row is one env's step: expected "
                             f"{self.num_envs} rows (num_envs), got {B}")
        a = rows(actions, "push_batch: actions", B, self.action_shape, allow_reshape=self.action_shape == ())
        if aux is not None:
            aux = tensor(aux, "push_batch: continuous_actions")
            if aux.dim() == 1:
                aux = aux[:, None]
            if aux.dim() != 2 or aux.shape[0] != B:
                raise ValueError(f"push_batch: continuous_actions: expected shape [{B}, k], got {list(aux.shape)}")
        trunc = torch.zeros(B, dtype=torch.bool) if truncated is None else flags(truncated, "push_batch: truncated", B)
        return self._push(st, a, aux, rows(rew, "push_batch: rewards", B, (), True),
                          rows(nxt, "push_batch: next_states", B, self.state_shape),
                          flags(done, "push_batch: dones", B), trunc, "push_batch")

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
        keys = tensor(indices, "update_priorities: indices")
        if keys.dtype != torch.int64:
            if keys.is_floating_point() or keys.dtype == torch.bool:
                raise TypeError(f"indices: expected integer keys (the indices sample() returned), got {keys.dtype}")
            keys = keys.to(torch.int64)
        td = tensor(td_errors, "update_priorities: td_errors")
        if not td.is_floating_point():
            td = td.to(torch.float32)
        if keys.dim() == 0:  # one index, as a scalar
            keys = keys.reshape(1)
        if keys.dim() == 1 and td.dim() == 0 and keys.shape[0] == 1:
            td = td.reshape(1)
        self.buffer.update_priorities(keys, td)

    def stats(self) -> dict:
        """The library's counters (``sanitized``, ``stale_dropped``, ...); reads the device."""
        if self.buffer is None:
            return {"sanitized": 0, "stale_dropped": 0}
        return self.buffer.stats()

"""n-step return accumulation as a vectorized ring op on the device (DESIGN.md section 5).

Math
----
Each env e keeps a window: a ring of its last n steps, ``[num_envs, n, ...]`` tensors on the
device. A step t of env e is the tuple (o_t, a_t, r_t, o'_t, term_t, trunc_t) passed to
``step`` (o'_t is ``next_obs``). The n-step transition that starts at step t is

    k        = n, or j + 1 if step t + j (j < n) is the first one in [t, t + n) that ends
               the episode (terminated or truncated)
    reward   = sum_{j < k} gamma**j * r_{t+j}          (accumulated in float64, output float32)
    next_obs = o'_{t+k-1}                              (the observation after its k-th step)
    discount = gamma**k                                 (float32)
    terminated = term_{t+k-1}                           (the episode terminated inside the k steps)

plus ``obs`` = o_t, ``action`` = a_t and every extra field of step t unchanged. The TD
target is ``reward + discount * (1 - terminated) * max_a Q(next_obs, a)``: a truncated
episode bootstraps with gamma**k, a terminated one never does; if both flags are set,
termination wins. Rewards never cross an episode boundary.

Emission
--------
The call that records step t + n - 1 emits the transition that started at step t: every
call after the first n - 1 returns exactly ``num_envs`` rows, one per env, whatever the
episodes did, so nothing has a data-dependent shape and nothing waits for the device.
A transition cut short by an episode end (k < n) simply comes out n - 1 calls after it
started, like every other one. Rows that are not real transitions (see autoreset below)
come out with ``valid`` False: give the mask to ``PrioritizedReplayBuffer.add(rows, valid)``
and they are stored with priority 0 and never sampled. ``flush()`` emits the last
``min(calls, n - 1)`` transitions of every env (their episodes unfinished: shorter k,
``terminated`` False unless they really terminated) and empties the windows. Every real
transition is emitted exactly once, by ``step`` or by ``flush``.

Autoreset (gymnasium.vector.AutoresetMode)
------------------------------------------
- ``"next_step"`` (gymnasium's default): the call after an env's episode ended (the
  previous call had terminated or truncated set for it) is its reset step (obs = the old
  episode's last obs, reward 0, next_obs = the new episode's first obs). It is not a
  transition: it is never emitted as a valid row and never contributes to a return.
- ``"same_step"``: for an env that is done, the ``next_obs`` the vector env returns is
  already the new episode's first obs; the true final observation is in
  ``info["final_obs"]`` (mask ``info["_final_obs"]``). Pass ``info=info`` (or
  ``final_obs=...``, optionally ``final_obs_mask=...``) to every ``step``; it becomes the
  done env's ``next_obs``.
- ``"disabled"``: you reset envs yourself; every call is a real transition.

If you call ``env.reset()`` on the vector env, first ``flush()``, then ``reset()`` this
object (``flush`` keeps the "next call is a reset step" flags of next-step autoreset, as the
env does until you reset it).

Example (runnable)::

    >>> import torch
    >>> from gpu_replay.nstep import NStep
    >>> ns = NStep(num_envs=2, n=3, gamma=0.5, autoreset_mode="disabled")
    >>> def go(t, r, term=(False, False)):
    ...     obs = torch.full((2, 1), float(t))
    ...     return ns.step(obs, torch.zeros(2, dtype=torch.int64), torch.tensor(r), obs + 1,
    ...                    torch.tensor(term), torch.tensor([False, False]))
    >>> go(0, [1.0, 1.0]) is None, go(1, [2.0, 2.0], term=(False, True)) is None  # env 1 terminates
    (True, True)
    >>> rows, valid = go(2, [4.0, 4.0])     # the transitions that started at step 0
    >>> rows["reward"].tolist(), rows["discount"].tolist(), rows["terminated"].tolist()
    ([3.0, 2.0], [0.125, 0.25], [False, True])
    >>> rows["next_obs"].flatten().tolist(), valid.tolist()
    ([3.0, 2.0], [True, True])
    >>> rows, valid = ns.flush()            # steps 1 and 2, row = i * num_envs + env
    >>> rows["obs"].flatten().tolist(), rows["reward"].tolist(), rows["discount"].tolist()
    ([1.0, 1.0, 2.0, 2.0], [4.0, 2.0, 4.0, 4.0], [0.25, 0.5, 0.5, 0.5])
    >>> rows["terminated"].tolist(), valid.tolist()
    ([False, True, False, False], [True, True, True, True])
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from ._storage import as_device, check_float, check_int, normalize_spec

__all__ = ["NStep", "AUTORESET_MODES"]

AUTORESET_MODES = ("next_step", "same_step", "disabled")
# gymnasium.vector.AutoresetMode values, accepted too (no gymnasium import needed).
_GYM_MODE_VALUES = {"NextStep": "next_step", "SameStep": "same_step", "Disabled": "disabled"}

# Names a stored field (obs, action, extras) may not take: the outputs, the inputs and the
# keyword arguments of step().
_OUTPUTS = ("reward", "next_obs", "discount", "terminated")
_RESERVED = frozenset({"obs", "action", "reward", "next_obs", "terminated", "truncated", "discount",
                       "valid", "done", "info", "final_obs", "final_obs_mask"})
_STATE_VERSION = 1


def _fmt_shape(lead, shape) -> str:
    return "[" + ", ".join(str(s) for s in (*lead, *shape)) + "]"


def _to_tensor(value, name: str) -> torch.Tensor:
    """A tensor view of a tensor or numpy array (no copy, no device move)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError(f"{name}: expected a numeric torch.Tensor or numpy.ndarray, got a numpy "
                            f"object array")
        try:
            return torch.from_numpy(np.ascontiguousarray(value))
        except TypeError as e:
            raise TypeError(f"{name}: numpy dtype {value.dtype} has no torch equivalent") from e
    if isinstance(value, np.generic):
        return _to_tensor(np.asarray(value), name)
    raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(value).__name__}")


def _parse_mode(mode) -> str:
    raw = getattr(mode, "value", mode)  # gymnasium.vector.AutoresetMode is an Enum
    if isinstance(raw, str):
        if raw in AUTORESET_MODES:
            return raw
        if raw in _GYM_MODE_VALUES:
            return _GYM_MODE_VALUES[raw]
    raise ValueError(f"autoreset_mode: expected one of {list(AUTORESET_MODES)} or a "
                     f"gymnasium.vector.AutoresetMode, got {mode!r}")


class NStep:
    """n-step returns for ``num_envs`` parallel envs, accumulated on ``device`` without host sync.

    ``NStep(num_envs, n, gamma, device=None, spec=None, autoreset_mode="next_step")``

    - ``step(obs, action, reward, next_obs, terminated, truncated, *, info=None,
      final_obs=None, final_obs_mask=None, **extra)``: one step per env (leading dim
      ``num_envs``; torch tensors on any device or numpy arrays). ``terminated`` and
      ``truncated`` are bool ``[num_envs]``; ``reward`` is ``[num_envs]`` of a dtype that casts
      safely to float32; ``obs``/``next_obs``/``action``/extras are ``[num_envs, *shape]``.
      Their shapes and dtypes are fixed by ``spec`` or by the first call; later inputs must
      have the same shape and a dtype that ``torch.can_cast`` to it. Returns ``None`` for the
      first ``n - 1`` calls (after construction, ``flush`` or ``reset``), then always
      ``(rows, valid)``: ``rows`` a dict of ``num_envs``-row tensors on ``device`` with keys
      ``obs, action, *extras, reward (float32), next_obs, discount (float32),
      terminated (bool)`` and ``valid`` a bool ``[num_envs]`` mask. Ready for
      ``PrioritizedReplayBuffer.add(rows, valid)`` (or ``buffer.add(*out)``).
    - ``flush()``: ``(rows, valid)`` with ``num_envs * min(calls, n - 1)`` rows (row
      ``i * num_envs + e`` is env e's i-th oldest pending step), or ``None`` if nothing is
      pending (always so for n = 1); empties the windows.
    - ``reset()``: drops the windows and the autoreset flags without emitting anything.
    - ``state_dict()`` / ``load_state_dict(sd)``: every piece of state, as tensors and ints.
    - ``buffer_spec()``: the ``{name: (shape, dtype)}`` spec of the rows, for a buffer.

    ``spec`` (optional) maps ``"obs"``, ``"action"`` and any extra field to ``(shape, dtype)``;
    it may also hold the output fields (``reward``, ``next_obs``, ``discount``,
    ``terminated``) as a replay buffer's spec does, which are then checked for consistency.
    Bad input raises ``ValueError``/``TypeError`` naming the argument before anything changes.

    See the module docstring for the math, the edge rules and a runnable example.
    """

    def __init__(self, num_envs: int, n: int, gamma: float, device=None, spec=None,
                 autoreset_mode="next_step"):
        self.num_envs = check_int(num_envs, "num_envs", 1, 2 ** 31 - 1)
        self.n = check_int(n, "n", 1, 2 ** 16)
        self.gamma = check_float(gamma, "gamma", 0.0, 1.0)
        self.autoreset_mode = _parse_mode(autoreset_mode)
        self.device = as_device(device)
        self._fields: dict[str, tuple[tuple[int, ...], torch.dtype]] | None = None
        self._given_spec = spec is not None
        if spec is not None:
            self._fields = self._parse_spec(spec)

        E, n, dev = self.num_envs, self.n, self.device
        self._t = 0  # calls since construction / flush / reset (host int)
        # gamma**m for m = 0..n, in float64, on the device.
        self._gpow = torch.full((n + 1,), self.gamma, dtype=torch.float64).pow(
            torch.arange(n + 1, dtype=torch.float64)).to(dev)
        self._gpow32 = self._gpow.to(torch.float32)
        self._row0 = torch.arange(E, device=dev) * n  # first flat row of each env in [E * n]
        # order[p] = the ring slots in chronological order when slot p holds the oldest step.
        self._orders = [torch.remainder(torch.arange(n) + p, n).to(dev) for p in range(n)]
        # spec-independent windows
        self._reward = torch.zeros((E, n), dtype=torch.float64, device=dev)
        self._term = torch.zeros((E, n), dtype=torch.bool, device=dev)
        self._done = torch.zeros((E, n), dtype=torch.bool, device=dev)
        self._real = torch.zeros((E, n), dtype=torch.bool, device=dev)
        self._prev_done = torch.zeros((E,), dtype=torch.bool, device=dev)
        self._win: dict[str, torch.Tensor] = {}
        self._next_obs: torch.Tensor | None = None
        if self._fields is not None:
            self._allocate()

    # ------------------------------------------------------------------ spec
    def _parse_spec(self, spec) -> dict:
        spec = normalize_spec(spec)
        for need in ("obs", "action"):
            if need not in spec:
                raise ValueError(f"spec: missing field {need!r}; expected at least 'obs' and 'action' "
                                 f"(plus any extra fields), got {list(spec)}")
        fields = {"obs": spec["obs"], "action": spec["action"]}
        obs_shape, obs_dt = spec["obs"]
        for name, (shape, dt) in spec.items():
            if name in ("obs", "action"):
                continue
            if name == "next_obs":
                if (shape, dt) != (obs_shape, obs_dt):
                    raise ValueError(f"spec['next_obs']: expected the same (shape, dtype) as 'obs' "
                                     f"{(obs_shape, obs_dt)}, got {(shape, dt)}")
            elif name in ("reward", "discount", "terminated"):
                out_dt = torch.bool if name == "terminated" else torch.float32
                if shape != () or not torch.can_cast(out_dt, dt):
                    raise ValueError(f"spec[{name!r}]: NStep emits {name} as shape () {out_dt}; "
                                     f"expected shape () and a dtype it casts to, got {(shape, dt)}")
            elif name in _RESERVED:
                raise ValueError(f"spec: {name!r} is not a field NStep stores or emits; fields are "
                                 f"'obs', 'action', extras and the outputs {list(_OUTPUTS)}")
            else:
                fields[name] = (shape, dt)
        return fields

    def _allocate(self) -> None:
        E, n, dev = self.num_envs, self.n, self.device
        self._win = {name: torch.zeros((E, n, *shape), dtype=dt, device=dev)
                     for name, (shape, dt) in self._fields.items()}
        shape, dt = self._fields["obs"]
        self._next_obs = torch.zeros((E, n, *shape), dtype=dt, device=dev)

    @property
    def spec(self) -> dict | None:
        """``{name: (shape, dtype)}`` of the stored fields (obs, action, extras); None until fixed."""
        return None if self._fields is None else dict(self._fields)

    def buffer_spec(self) -> dict:
        """The spec of the emitted rows, e.g. for ``PrioritizedReplayBuffer(capacity, spec)``."""
        if self._fields is None:
            raise ValueError("buffer_spec: the field spec is not fixed yet; pass spec= to NStep or "
                             "call step() once")
        out = dict(self._fields)
        out["reward"] = ((), torch.float32)
        out["next_obs"] = self._fields["obs"]
        out["discount"] = ((), torch.float32)
        out["terminated"] = ((), torch.bool)
        return out

    # ------------------------------------------------------------------ checks
    def _check_field(self, name, value, shape, dtype, what=None) -> torch.Tensor:
        what = what or f"step: {name}"
        t = _to_tensor(value, what)
        if tuple(t.shape) != (self.num_envs, *shape):
            raise ValueError(f"{what}: expected shape {_fmt_shape((self.num_envs,), shape)} "
                             f"(num_envs={self.num_envs}, then {name}'s shape {tuple(shape)}), "
                             f"got {tuple(t.shape)}")
        if not torch.can_cast(t.dtype, dtype):
            raise TypeError(f"{what}: expected dtype {dtype} (or one that casts to it safely), "
                            f"got {t.dtype}")
        return t

    def _check_flag(self, name, value) -> torch.Tensor:
        t = _to_tensor(value, f"step: {name}")
        if t.dtype != torch.bool:
            raise TypeError(f"step: {name}: expected dtype torch.bool, got {t.dtype}")
        if tuple(t.shape) != (self.num_envs,):
            raise ValueError(f"step: {name}: expected shape [{self.num_envs}] (one per env), "
                             f"got {tuple(t.shape)}")
        return t

    def _move(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # CPU -> CUDA without a host sync (the source is staged before cudaMemcpyAsync returns);
        # anything else (same device, CUDA -> CPU) as an ordinary blocking copy.
        # detach: an input that requires grad (e.g. a policy's continuous action) must not drag
        # its autograd graph into the windows.
        nb = t.device.type == "cpu" and self.device.type == "cuda"
        return t.detach().to(device=self.device, dtype=dtype, non_blocking=nb)

    def _final_obs(self, terminated, truncated, info, final_obs, final_obs_mask, shape, dtype):
        """(dense final obs [E, *shape] on device, mask [E] on device) or None."""
        E = self.num_envs
        if self.autoreset_mode != "same_step":
            if final_obs is not None or final_obs_mask is not None:
                raise TypeError(f"step: final_obs/final_obs_mask are only used with "
                                f"autoreset_mode='same_step', this NStep has "
                                f"{self.autoreset_mode!r}")
            if info is not None and not isinstance(info, Mapping):
                raise TypeError(f"step: info: expected a mapping (the info dict of env.step), "
                                f"got {type(info).__name__}")
            return None
        if info is None and final_obs is None:
            raise TypeError("step: autoreset_mode='same_step' needs each done env's true final "
                            "observation: pass info=info (the dict env.step returned) or final_obs=")
        if info is not None:
            if not isinstance(info, Mapping):
                raise TypeError(f"step: info: expected a mapping (the info dict of env.step), "
                                f"got {type(info).__name__}")
            if final_obs is not None:
                raise TypeError("step: pass either info= or final_obs=, not both")
            final_obs = info.get("final_obs")
            if final_obs_mask is None:
                final_obs_mask = info.get("_final_obs")
        if final_obs_mask is not None:
            mask = _to_tensor(final_obs_mask, "step: final_obs_mask")
            if mask.dtype != torch.bool or tuple(mask.shape) != (E,):
                raise ValueError(f"step: final_obs_mask (info['_final_obs']): expected a bool mask of "
                                 f"shape [{E}], got {mask.dtype} {tuple(mask.shape)}")
        else:
            mask = None
        if final_obs is None:
            if mask is not None and mask.device.type == "cpu" and bool(mask.any()):
                raise ValueError("step: final_obs_mask is set for some envs but no final_obs was given")
            dense, mask = None, torch.zeros(E, dtype=torch.bool)
        elif isinstance(final_obs, np.ndarray) and final_obs.dtype == object:
            # gymnasium: an object array holding each done env's final obs, None elsewhere.
            if final_obs.shape != (E,):
                raise ValueError(f"step: final_obs: expected an object array of shape ({E},) "
                                 f"(one entry per env), got shape {final_obs.shape}")
            present = np.array([x is not None for x in final_obs], dtype=bool)
            m = present if mask is None else mask.cpu().numpy()
            if (m & ~present).any():
                raise ValueError(f"step: final_obs: envs {np.flatnonzero(m & ~present).tolist()} are "
                                 f"marked in final_obs_mask but their final_obs is None")
            dense = torch.zeros((E, *shape), dtype=dtype)
            for e in np.flatnonzero(m):
                x = self._check_single(final_obs[e], f"step: final_obs[{e}]", shape, dtype)
                dense[e] = x
            mask = torch.from_numpy(m)
        else:
            dense = self._check_field("final_obs", final_obs, shape, dtype, "step: final_obs")
            if mask is None:  # a dense array: used for the done envs
                mask = _done_mask(terminated, truncated)
        # If the flags live on the host, check for free that every done env has its final obs.
        if terminated.device.type == "cpu" and truncated.device.type == "cpu" and mask.device.type == "cpu":
            missing = (terminated | truncated) & ~mask
            if bool(missing.any()):
                raise ValueError(f"step: final_obs: envs {missing.nonzero().flatten().tolist()} are "
                                 f"done (terminated or truncated) but have no final observation "
                                 f"(info['final_obs'] / final_obs); with same-step autoreset their "
                                 f"next_obs is already the next episode's first observation")
        return dense, mask

    def _check_single(self, value, what, shape, dtype) -> torch.Tensor:
        t = _to_tensor(value, what)
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{what}: expected shape {tuple(shape)} (one env's obs), got {tuple(t.shape)}")
        if not torch.can_cast(t.dtype, dtype):
            raise TypeError(f"{what}: expected dtype {dtype} (or one that casts to it safely), got {t.dtype}")
        return t

    # ------------------------------------------------------------------ step
    def step(self, obs, action, reward, next_obs, terminated, truncated, *, info=None,
             final_obs=None, final_obs_mask=None, **extra):
        """Record one step per env; return ``None`` for the first n - 1 calls, then
        ``(rows, valid)`` with exactly ``num_envs`` rows (see the class docstring)."""
        E = self.num_envs
        # ---- validate everything (metadata only) before touching any state
        bad = sorted(k for k in extra if k in _RESERVED)
        if bad:
            raise ValueError(f"step: extra field name(s) {bad} are reserved (inputs/outputs of NStep)")
        given = {"obs": obs, "action": action, **extra}
        if self._fields is not None:
            missing = [k for k in self._fields if k not in given]
            unknown = [k for k in given if k not in self._fields]
            if missing or unknown:
                parts = ([f"missing extra field(s) {missing}"] if missing else []) + \
                        ([f"unknown extra field(s) {unknown}"] if unknown else [])
                raise ValueError(f"step: {'; '.join(parts)}; expected exactly the fields fixed "
                                 f"{'by spec' if self._given_spec else 'at the first call'}: "
                                 f"{list(self._fields)}")
            fields = self._fields
        else:
            fields = {}
            for name, v in given.items():
                t = _to_tensor(v, f"step: {name}")
                if t.dim() < 1 or t.shape[0] != E:
                    raise ValueError(f"step: {name}: expected a leading dim of num_envs={E}, got shape "
                                     f"{tuple(t.shape)}")
                fields[name] = (tuple(t.shape[1:]), t.dtype)
        tensors = {name: self._check_field(name, given[name], *fields[name]) for name in fields}
        obs_shape, obs_dt = fields["obs"]
        nxt = self._check_field("next_obs", next_obs, obs_shape, obs_dt)
        rew = _to_tensor(reward, "step: reward")
        if tuple(rew.shape) != (E,):
            raise ValueError(f"step: reward: expected shape [{E}] (one per env), got {tuple(rew.shape)}")
        if not torch.can_cast(rew.dtype, torch.float32):
            raise TypeError(f"step: reward: expected a dtype that casts safely to torch.float32, "
                            f"got {rew.dtype}")
        term = self._check_flag("terminated", terminated)
        trunc = self._check_flag("truncated", truncated)
        fin = self._final_obs(term, trunc, info, final_obs, final_obs_mask, obs_shape, obs_dt)

        # ---- all inputs are valid: move them to the device, then commit
        if self._fields is None:
            self._fields = fields
            self._allocate()
        n = self.n
        w = self._t % n
        nb = self.device.type == "cuda"  # host -> device without a sync (see _move)
        nxt_w = self._next_obs.select(1, w)
        if fin is not None and fin[0] is not None:
            dense, mask = self._move(fin[0], obs_dt), self._move(fin[1], torch.bool)
            nxt_w.copy_(torch.where(mask.view(E, *([1] * len(obs_shape))), dense, self._move(nxt, obs_dt)))
        else:
            nxt_w.copy_(nxt.detach(), non_blocking=nb)
        # copy_ converts dtype and device in one op; detach keeps autograd graphs out
        for name, t in tensors.items():
            self._win[name].select(1, w).copy_(t.detach(), non_blocking=nb)
        self._reward.select(1, w).copy_(rew.detach(), non_blocking=nb)
        term_w, done_w = self._term.select(1, w), self._done.select(1, w)
        term_w.copy_(term, non_blocking=nb)
        torch.logical_or(term_w, trunc.to(self.device, non_blocking=nb), out=done_w)
        if self.autoreset_mode == "next_step":
            # the call after an episode end is a reset step
            torch.logical_not(self._prev_done, out=self._real.select(1, w))
            self._prev_done.copy_(done_w)
        else:
            self._real.select(1, w).fill_(True)
        self._t += 1
        if self._t < n:
            return None
        return self._emit(self._orders[(w + 1) % n], (w + 1) % n)

    def _emit(self, order: torch.Tensor, start: int):
        """Rows for the transitions that start in ring slot ``start`` (a host int), using the
        chronological window ``order`` (ring slots, device int64 [L], L <= n, order[0] == start).
        Fixed shapes, no host sync."""
        if self.device.type == "cpu" and _emit_nb is not None:
            return self._emit_cpu(order, start)
        L = order.shape[0]
        done_c = self._done.index_select(1, order)                     # [E, L]
        # alive[j]: no episode end among window steps 0..j-1, i.e. j < k (cumsum_j == done_j)
        alive = done_c.cumsum(1) <= done_c
        k = alive.sum(1)                                              # [E], 1 <= k <= L
        ret = torch.where(alive, self._reward.index_select(1, order), 0.0).matmul(self._gpow[:L])
        # flat row (env, slot of step t+k-1) in the [E * n] view of a window
        last = self._row0 + order.index_select(0, k - 1)
        rows = {name: win.select(1, start).clone() for name, win in self._win.items()}
        rows["reward"] = ret.to(torch.float32)
        rows["next_obs"] = self._next_obs.flatten(0, 1).index_select(0, last)
        rows["discount"] = self._gpow32.index_select(0, k)
        rows["terminated"] = self._term.view(-1).index_select(0, last)
        valid = self._real.select(1, start).clone()
        return rows, valid

    def _emit_cpu(self, order: torch.Tensor, start: int):
        """``_emit`` on the CPU: the per-env scan (k, the return, the last step) in one
        compiled loop instead of ~12 small torch ops. Same rows (the return is summed left to
        right in float64, as the matmul sums it up to rounding)."""
        E = self.num_envs
        reward = torch.empty(E, dtype=torch.float32)
        discount = torch.empty(E, dtype=torch.float32)
        terminated = torch.empty(E, dtype=torch.bool)
        last = torch.empty(E, dtype=torch.int64)
        _emit_nb(self._done.numpy(), self._reward.numpy(), self._term.numpy(), self._gpow.numpy(),
                 self._gpow32.numpy(), order.numpy(), self.n, reward.numpy(), discount.numpy(),
                 terminated.numpy(), last.numpy())
        rows = {name: win.select(1, start).clone() for name, win in self._win.items()}
        rows["reward"] = reward
        rows["next_obs"] = self._next_obs.flatten(0, 1).index_select(0, last)
        rows["discount"] = discount
        rows["terminated"] = terminated
        return rows, self._real.select(1, start).clone()

    # ------------------------------------------------------------------ flush / reset
    def flush(self):
        """Emit the transitions still pending in the windows (``num_envs * min(calls, n - 1)``
        rows, row ``i * num_envs + e`` = env e's i-th oldest pending step, ``(rows, valid)``), or
        ``None`` if none is pending; then empty the windows. Their k is cut at the episode's end or
        at the last recorded step; ``terminated`` is set only if the episode really terminated.
        The next-step autoreset flags are kept (see ``reset``)."""
        P = min(self._t, self.n - 1)
        out = None
        if P > 0 and self._fields is not None:
            n, t = self.n, self._t
            # pending step i (0 = oldest) sits in slot (t - P + i) % n; its window runs to the end
            parts = [self._emit(self._orders[(t - P + i) % n][:P - i], (t - P + i) % n)
                     for i in range(P)]
            rows = {name: torch.cat([p[0][name] for p in parts]) for name in parts[0][0]}
            valid = torch.cat([p[1] for p in parts])
            out = (rows, valid)
        self._clear(keep_autoreset=True)
        return out

    def reset(self) -> None:
        """Drop everything pending without emitting it, and forget that the last call ended an
        episode (call after ``env.reset()`` of the vector env). The field spec stays fixed."""
        self._clear(keep_autoreset=False)

    def _clear(self, keep_autoreset: bool) -> None:
        self._t = 0
        for t in (*self._win.values(), self._reward, self._term, self._done, self._real):
            t.zero_()
        if self._next_obs is not None:
            self._next_obs.zero_()
        if not keep_autoreset:
            self._prev_done.zero_()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """All state: ints (config, call counter) and tensors (copies, on ``device``).
        Field windows are ``"field.<name>"`` ``[num_envs, n, *shape]``; their shapes and dtypes
        carry the spec."""
        sd = {
            "version": _STATE_VERSION,
            "num_envs": self.num_envs,
            "n": self.n,
            "gamma": torch.tensor(self.gamma, dtype=torch.float64),
            "autoreset_mode": AUTORESET_MODES.index(self.autoreset_mode),
            "t": self._t,
            "initialized": int(self._fields is not None),
            "reward": self._reward.clone(),
            "terminated": self._term.clone(),
            "done": self._done.clone(),
            "real": self._real.clone(),
            "prev_done": self._prev_done.clone(),
        }
        if self._fields is not None:
            for name, win in self._win.items():
                sd[f"field.{name}"] = win.clone()
            sd["next_obs"] = self._next_obs.clone()
        return sd

    def load_state_dict(self, sd: Mapping) -> None:
        """Restore ``state_dict()`` output into an NStep built with the same num_envs, n, gamma and
        autoreset_mode (and spec, if it was given). Checked fully before anything changes."""
        if not isinstance(sd, Mapping):
            raise TypeError(f"load_state_dict: expected a mapping, got {type(sd).__name__}")
        E, n = self.num_envs, self.n
        need = ["version", "num_envs", "n", "gamma", "autoreset_mode", "t", "initialized",
                "reward", "terminated", "done", "real", "prev_done"]
        missing = [k for k in need if k not in sd]
        if missing:
            raise ValueError(f"load_state_dict: missing key(s) {missing}")
        if sd["version"] != _STATE_VERSION:
            raise ValueError(f"load_state_dict: version: expected {_STATE_VERSION}, got {sd['version']!r}")
        gamma = float(sd["gamma"])
        mode = AUTORESET_MODES[int(sd["autoreset_mode"])] if int(sd["autoreset_mode"]) in (0, 1, 2) else None
        for key, want, got in (("num_envs", E, sd["num_envs"]), ("n", n, sd["n"]),
                               ("gamma", self.gamma, gamma), ("autoreset_mode", self.autoreset_mode, mode)):
            if want != got:
                raise ValueError(f"load_state_dict: {key}: this NStep has {want!r}, the state has {got!r}")
        t = check_int(sd["t"], "load_state_dict: t", 0)
        init = bool(sd["initialized"])

        def tensor(key, shape, dtype):
            v = sd[key]
            if not isinstance(v, torch.Tensor) or tuple(v.shape) != tuple(shape) or v.dtype != dtype:
                got = f"{v.dtype} {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
                raise ValueError(f"load_state_dict: {key}: expected {dtype} {_fmt_shape(shape, ())}, got {got}")
            return v.to(self.device).clone()

        new = {"reward": tensor("reward", (E, n), torch.float64),
               "terminated": tensor("terminated", (E, n), torch.bool),
               "done": tensor("done", (E, n), torch.bool),
               "real": tensor("real", (E, n), torch.bool),
               "prev_done": tensor("prev_done", (E,), torch.bool)}
        fields = None
        if init:
            names = [k[len("field."):] for k in sd if isinstance(k, str) and k.startswith("field.")]
            fields = {}
            for name in names:
                v = sd[f"field.{name}"]
                if not isinstance(v, torch.Tensor) or v.dim() < 2 or tuple(v.shape[:2]) != (E, n):
                    raise ValueError(f"load_state_dict: field.{name}: expected a tensor [{E}, {n}, ...]")
                fields[name] = (tuple(v.shape[2:]), v.dtype)
            if "obs" not in fields or "action" not in fields or "next_obs" not in sd:
                raise ValueError("load_state_dict: missing field.obs, field.action or next_obs")
            if self._fields is not None and fields != self._fields:
                raise ValueError(f"load_state_dict: fields: this NStep has {self._fields}, the state "
                                 f"has {fields}")
            new_win = {name: sd[f"field.{name}"].to(self.device).clone() for name in fields}
            new_next = tensor("next_obs", (E, n, *fields["obs"][0]), fields["obs"][1])
        elif t > 0:
            raise ValueError(f"load_state_dict: t={t} but the state has no field windows")
        # commit
        if fields is not None:
            self._fields = fields
            self._win = new_win
            self._next_obs = new_next
        elif self._fields is not None:
            self._clear(keep_autoreset=True)
        self._reward, self._term, self._done = new["reward"], new["terminated"], new["done"]
        self._real, self._prev_done = new["real"], new["prev_done"]
        self._t = t

    def __repr__(self) -> str:
        return (f"NStep(num_envs={self.num_envs}, n={self.n}, gamma={self.gamma}, "
                f"device={str(self.device)!r}, autoreset_mode={self.autoreset_mode!r}, "
                f"fields={None if self._fields is None else list(self._fields)})")


try:  # the compiled CPU scan of _emit_cpu (numba is optional)
    import numba as _numba
except ImportError:  # pragma: no cover
    _numba = None

_emit_nb = None
if _numba is not None:

    @_numba.njit(cache=True, nogil=True)
    def _emit_nb(done, reward, term, gpow, gpow32, order, n, out_r, out_disc, out_term, out_last):
        for e in range(done.shape[0]):
            ret = 0.0
            k = 0
            for jj in range(order.shape[0]):  # the window's steps, oldest first
                j = order[jj]
                ret += reward[e, j] * gpow[jj]
                k = jj + 1
                if done[e, j]:  # the episode ended at this step: k steps, no reward after it
                    break
            lastj = order[k - 1]
            out_r[e] = ret
            out_disc[e] = gpow32[k]
            out_term[e] = term[e, lastj]
            out_last[e] = e * n + lastj


def _done_mask(terminated: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    if terminated.device != truncated.device:
        truncated = truncated.to(terminated.device)
    return terminated | truncated

"""n-step return accumulation as a vectorized ring op on the device.

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
started, like every other one. Rows that are not real transitions (gymnasium's next-step
autoreset steps, see ``gpu_replay.autoreset``) come out with ``valid`` False: give the mask to
``add(rows, valid)`` and they are stored but never sampled. ``flush()`` emits the last
``min(calls, n - 1)`` transitions of every env (their episodes unfinished: shorter k,
``terminated`` False unless they really terminated) and empties the windows. Every real
transition is emitted exactly once, by ``step`` or by ``flush``.

If you call ``env.reset()`` on the vector env, first ``flush()``, then ``reset()`` this
object (``flush`` keeps the "next call is a reset step" flags of next-step autoreset, as the
env does until you reset it).

Example (runnable)::

    >>> import torch
    >>> from gpu_replay import NStep
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

import numpy as np
import torch

from . import autoreset, staging
from ._backend import resolve_backend
from ._checks import (StateReader, as_device, as_tensor, check_field, check_float, check_int, constant_to,
                      host_numpy, normalize_spec, numpy_casts)

__all__ = ["NStep"]

_OUTPUTS = ("reward", "next_obs", "discount", "terminated")
# names a stored field (obs, action, extras) may not take: the outputs, inputs and keywords of step()
_RESERVED = frozenset({"obs", "action", "reward", "next_obs", "terminated", "truncated", "discount",
                       "valid", "done", "info", "final_obs", "final_obs_mask"})
_STATE_VERSION = 1


_NP_CASTS = {dt: numpy_casts(dt) for dt in (torch.float64, torch.float32, torch.float16, torch.int64, torch.int32,
                                          torch.int16, torch.int8, torch.uint8, torch.bool)}
_REWARD_NP = _NP_CASTS[torch.float32]


class NStep:
    """n-step returns for ``num_envs`` parallel envs, accumulated on ``device`` without host sync.

    ``NStep(num_envs, n, gamma, device=None, spec=None, autoreset_mode="next_step", backend="auto")``

    - ``step(obs, action, reward, next_obs, terminated, truncated, *, info=None,
      final_obs=None, final_obs_mask=None, **extra)``: one step per env (leading dim
      ``num_envs``; torch tensors on any device or numpy arrays). ``terminated`` and
      ``truncated`` are bool ``[num_envs]``; ``reward`` is ``[num_envs]`` of a dtype that casts
      safely to float32; ``obs``/``next_obs``/``action``/extras are ``[num_envs, *shape]``.
      Their shapes and dtypes are fixed by ``spec`` or by the first call; later inputs must
      have the same shape and a dtype that ``torch.can_cast`` to it. Pass ``info=info`` (what
      the vector env returned): with same-step autoreset it carries the final observations,
      and with the other modes it is checked for them (a mode mismatch raises). Returns
      ``None`` for the first ``n - 1`` calls (after construction, ``flush`` or ``reset``),
      then always ``(rows, valid)``: ``rows`` a dict of ``num_envs``-row tensors on ``device``
      with keys ``obs, action, *extras, reward (float32), next_obs, discount (float32),
      terminated (bool)`` and ``valid`` a bool ``[num_envs]`` mask, ready for
      ``buffer.add(rows, valid)``.
    - ``flush()``: ``(rows, valid)`` with ``num_envs * min(calls, n - 1)`` rows (row
      ``i * num_envs + e`` is env e's i-th oldest pending step), or ``None`` if nothing is
      pending (always so for n = 1); empties the windows.
    - ``reset()``: drops the windows and the autoreset flags without emitting anything.
    - ``state_dict()`` / ``load_state_dict(sd)``: every piece of state, as tensors and ints.
    - ``buffer_spec()``: the ``{name: (shape, dtype)}`` spec of the rows, for a buffer.

    ``autoreset_mode``: ``"next_step"`` (gymnasium's default), ``"same_step"``, ``"disabled"``,
    a ``gymnasium.vector.AutoresetMode`` or the vector env itself (see ``gpu_replay.autoreset``).
    Memory: the windows hold ``num_envs * n`` steps (obs and next_obs each), linear in n.
    See the module docstring for the math, the edge rules and a runnable example.
    """

    def __init__(self, num_envs: int, n: int, gamma: float, device=None, spec=None,
                 autoreset_mode="next_step", backend: str = "auto"):
        self.num_envs = check_int(num_envs, "num_envs", 1, 2 ** 31 - 1)
        self.n = check_int(n, "n", 1, 2 ** 16)
        self.gamma = check_float(gamma, "gamma", 0.0, 1.0)
        self.autoreset_mode = autoreset.parse_mode(autoreset_mode)
        self.device = as_device(device)
        self.backend = resolve_backend(backend, self.device)
        self._fields: dict[str, tuple[tuple[int, ...], torch.dtype]] | None = None
        self._given_spec = spec is not None
        if spec is not None:
            self._fields = self._parse_spec(spec)
        E, n, dev = self.num_envs, self.n, self.device
        self._t = 0  # calls since construction / flush / reset (host int)
        gpow = [self.gamma ** m for m in range(n + 1)]  # gamma**m in float64 (host arithmetic)
        self._gpow = constant_to(torch.tensor(gpow, dtype=torch.float64), dev)
        self._gpow32 = self._gpow.to(torch.float32)
        self._gpow_np = np.array(gpow, dtype=np.float64)
        self._gpow32_np = self._gpow_np.astype(np.float32)
        self._row0 = constant_to(torch.arange(E) * n, dev)  # first flat row of each env in [E * n]
        self._ring = constant_to(torch.arange(2 * n) % n, dev)  # ring slots in time order from p: [p:p+L]
        with torch.inference_mode(False):
            self._reward = torch.zeros((E, n), dtype=torch.float64, device=dev)
            self._term = torch.zeros((E, n), dtype=torch.bool, device=dev)
            self._done = torch.zeros((E, n), dtype=torch.bool, device=dev)
            self._real = torch.zeros((E, n), dtype=torch.bool, device=dev)
            self._prev_done = torch.zeros((E,), dtype=torch.bool, device=dev)
        self._win: dict[str, torch.Tensor] = {}
        self._next_obs: torch.Tensor | None = None
        self._fast = None  # set with the windows (the CPU fast path's expectations)
        self._cpu = self.backend == "numba"  # windows as numpy views, the emit scan compiled
        from .kernels import emit as _emit_ops  # (imports numba only if installed)
        self._ops = _emit_ops
        if self._fields is not None:
            self._allocate()

    # ------------------------------------------------------------------ spec
    def _parse_spec(self, spec) -> dict:
        spec = normalize_spec(spec)
        for need in ("obs", "action"):
            if need not in spec:
                raise ValueError(f"spec: expected at least the fields 'obs' and 'action' (plus extras), "
                                 f"got {list(spec)}")
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
                    raise ValueError(f"spec[{name!r}]: expected shape () and a dtype {out_dt} casts to (NStep "
                                     f"emits {name} so), got {(shape, dt)}")
            elif name in _RESERVED:
                raise ValueError(f"spec: expected 'obs', 'action', extras and the outputs {list(_OUTPUTS)}, got "
                                 f"{name!r}, which NStep neither stores nor emits")
            else:
                fields[name] = (shape, dt)
        return fields

    def _allocate(self) -> None:
        E, n, dev = self.num_envs, self.n, self.device
        with torch.inference_mode(False):
            self._win = {name: torch.zeros((E, n, *shape), dtype=dt, device=dev)
                         for name, (shape, dt) in self._fields.items()}
            shape, dt = self._fields["obs"]
            self._next_obs = torch.zeros((E, n, *shape), dtype=dt, device=dev)
        self._views()
        # the CPU fast path's expectations: {field: ((E, *shape), numpy dtypes that cast safely)}
        self._fast = None
        if self._cpu and self.autoreset_mode != "same_step" and all(dt in _NP_CASTS for _, dt in self._fields.values()):
            self._fast = {name: ((E, *shape), _NP_CASTS[dt]) for name, (shape, dt) in self._fields.items()}
            self._fast["next_obs"] = self._fast["obs"]

    def _views(self) -> None:
        """numpy views of the windows (the CPU writes them with numpy, ~1 µs a field) and
        their wide-word row views [num_envs * n, words] (the Triton kernels' view)."""
        from .storage import wide_rows
        self._np = {}
        if self._cpu:
            for name, t in (*self._win.items(), ("next_obs", self._next_obs), ("reward", self._reward),
                            ("term", self._term), ("done", self._done), ("real", self._real),
                            ("prev_done", self._prev_done)):
                if t is not None and t.dtype != torch.bfloat16:
                    self._np[name] = t.numpy()
        rows = self.num_envs * self.n
        self._wwin = {name: wide_rows(t, rows) for name, t in (*self._win.items(), ("next_obs", self._next_obs))}

    @property
    def nbytes(self) -> int:
        """Device bytes of the windows (linear in n)."""
        ts = [self._reward, self._term, self._done, self._real, self._prev_done, *self._win.values()]
        if self._next_obs is not None:
            ts.append(self._next_obs)
        return sum(t.nbytes for t in ts)

    @property
    def spec(self) -> dict | None:
        """``{name: (shape, dtype)}`` of the stored fields (obs, action, extras); None until fixed."""
        return None if self._fields is None else dict(self._fields)

    def buffer_spec(self) -> dict:
        """The spec of the emitted rows, e.g. for ``PrioritizedReplayBuffer(capacity, spec)``."""
        if self._fields is None:
            raise ValueError("buffer_spec: expected a fixed field spec (pass spec= to NStep or call step() "
                             "once), got none yet")
        out = dict(self._fields)
        out["reward"] = ((), torch.float32)
        out["next_obs"] = self._fields["obs"]
        out["discount"] = ((), torch.float32)
        out["terminated"] = ((), torch.bool)
        return out

    # ------------------------------------------------------------------ checks
    def _check_flag(self, name, value) -> torch.Tensor:
        t = as_tensor(value, f"step: {name}")
        if t.dtype != torch.bool:
            raise TypeError(f"step: {name}: expected dtype torch.bool, got {t.dtype}")
        if tuple(t.shape) != (self.num_envs,):
            raise ValueError(f"step: {name}: expected shape [{self.num_envs}] (one per env), got {tuple(t.shape)}")
        return t

    def _check(self, obs, action, reward, next_obs, terminated, truncated, info, final_obs, final_obs_mask, extra):
        """Every input checked (metadata only) before anything changes. Returns the fields,
        their tensor views, next_obs, reward, the two flags and the final observations."""
        E = self.num_envs
        bad = sorted(k for k in extra if k in _RESERVED)
        if bad:
            raise ValueError(f"step: expected extra fields with names other than NStep's inputs and outputs, "
                             f"got reserved name(s) {bad}")
        given = {"obs": obs, "action": action, **extra}
        if self._fields is not None:
            if len(given) != len(self._fields) or any(k not in given for k in self._fields):
                missing = [k for k in self._fields if k not in given]
                unknown = [k for k in given if k not in self._fields]
                how = "by spec" if self._given_spec else "at the first call"
                raise ValueError(f"step: expected exactly the fields fixed {how}: {list(self._fields)}, got "
                                 f"{list(given)} (missing {missing}, unknown {unknown})")
            fields = self._fields
        else:
            fields = {}
            for name, v in given.items():
                t = as_tensor(v, f"step: {name}")
                if t.dim() < 1 or t.shape[0] != E:
                    raise ValueError(f"step: {name}: expected a leading dim of num_envs={E}, got shape "
                                     f"{tuple(t.shape)}")
                fields[name] = (tuple(t.shape[1:]), t.dtype)
        tensors = {name: check_field(given[name], f"step: {name}", (E,), *fields[name]) for name in fields}
        obs_shape, obs_dt = fields["obs"]
        nxt = check_field(next_obs, "step: next_obs", (E,), obs_shape, obs_dt)
        rew = as_tensor(reward, "step: reward")
        if tuple(rew.shape) != (E,):
            raise ValueError(f"step: reward: expected shape [{E}] (one per env), got {tuple(rew.shape)}")
        if not torch.can_cast(rew.dtype, torch.float32):
            raise TypeError(f"step: reward: expected a dtype that casts safely to torch.float32, got {rew.dtype}")
        term = self._check_flag("terminated", terminated)
        trunc = self._check_flag("truncated", truncated)
        fin = autoreset.final_obs(self.autoreset_mode, E, term, trunc, info, final_obs, final_obs_mask,
                                  obs_shape, obs_dt)
        for name, t in (*tensors.items(), ("next_obs", nxt), ("reward", rew), ("terminated", term),
                        ("truncated", trunc)):
            if t.layout != torch.strided or (t.device.type not in ("cpu", self.device.type)):
                raise ValueError(f"step: {name}: expected a dense tensor on the CPU or on {self.device}, got "
                                 f"layout {t.layout} on {t.device}")
        return fields, tensors, nxt, rew, term, trunc, fin

    # ------------------------------------------------------------------ step
    def step(self, obs, action, reward, next_obs, terminated, truncated, *, info=None,
             final_obs=None, final_obs_mask=None, **extra):
        """Record one step per env; return ``None`` for the first n - 1 calls, then
        ``(rows, valid)`` with exactly ``num_envs`` rows (see the class docstring)."""
        out = self._step(obs, action, reward, next_obs, terminated, truncated, info, final_obs,
                         final_obs_mask, extra, host_rows=True)
        if out is None:
            return None
        rows, valid = out
        if isinstance(valid, np.ndarray):  # the CPU path's numpy rows (field rows: views of the windows)
            return {k: v.clone() if isinstance(v, torch.Tensor) else torch.from_numpy(v.copy() if k in self._win else v)
                    for k, v in rows.items()}, torch.from_numpy(valid)
        if self.backend == "triton" and len(self._win) < 8:  # the emit kernel wrote fresh rows
            return rows, valid
        return {k: v.clone() if k in self._win else v for k, v in rows.items()}, valid

    def _fast_inputs(self, obs, action, reward, next_obs, terminated, truncated, info, final_obs, final_obs_mask,
                     extra):
        """The CPU path's plain case, checked on metadata alone: every input a numpy array of
        the fixed shape and a dtype that casts safely (as gymnasium gives them), no final
        observations to parse. Returns the fields, or None (then ``_check`` runs, with its
        messages)."""
        fast = self._fast
        if fast is None or final_obs is not None or final_obs_mask is not None or len(extra) + 3 != len(fast):
            return None
        if info is not None and (type(info) is not dict or "final_obs" in info or "_final_obs" in info):
            return None
        E = self.num_envs
        for a in (reward, terminated, truncated):
            if type(a) is not np.ndarray or a.shape != (E,):
                return None
        if terminated.dtype != np.bool_ or truncated.dtype != np.bool_ or reward.dtype not in _REWARD_NP:
            return None
        given = {"obs": obs, "action": action, **extra}
        for name, (shape, ok) in fast.items():
            a = given.get(name) if name != "next_obs" else next_obs
            if type(a) is not np.ndarray or a.shape != shape or a.dtype not in ok:
                return None
        return given

    def _step(self, obs, action, reward, next_obs, terminated, truncated, info=None, final_obs=None,
              final_obs_mask=None, extra=None, host_rows=False):
        """``step`` whose rows may be views of the windows (valid until the next call). With
        ``host_rows``, the CPU path (numba) returns numpy rows and mask (what the buffer's host
        storage writes); else tensors."""
        out = self._record_and_emit(obs, action, reward, next_obs, terminated, truncated, info, final_obs,
                                    final_obs_mask, extra)
        return out if host_rows else _as_tensors(out)

    def _record_and_emit(self, obs, action, reward, next_obs, terminated, truncated, info, final_obs, final_obs_mask,
                         extra):
        if self.backend == "numba":
            given = self._fast_inputs(obs, action, reward, next_obs, terminated, truncated, info, final_obs,
                                      final_obs_mask, extra or {})
            if given is not None:
                w = self._t % self.n
                out = self._ops.step_numba(self, w, {k: given[k] for k in self._win}, next_obs, reward, terminated,
                                           truncated)
                self._t += 1
                return out
        fields, tensors, nxt, rew, term, trunc, fin = self._check(
            obs, action, reward, next_obs, terminated, truncated, info, final_obs, final_obs_mask, extra or {})
        if self._fields is None:  # all inputs are valid: fix the spec now
            self._fields = fields
            self._allocate()
        nxt0, nxt = nxt, self._with_final_obs(nxt, fin)
        w = self._t % self.n
        ops = self._ops
        if self.backend == "numba":
            ops.record_numba(self, w, tensors, nxt, rew, term, trunc)
        else:
            names = list(tensors)
            dts = [self._fields[k][1] for k in names] + [self._fields["obs"][1], torch.float64, torch.bool, torch.bool]
            # numpy inputs go to the staging as numpy (host data, even when the device is the CPU)
            given = {"obs": obs, "action": action, **(extra or {})}
            raw = [_numpy_or(given[k], t) for k, t in tensors.items()]
            raw += [_numpy_or(next_obs, nxt) if nxt is nxt0 else nxt,
                    _numpy_or(reward, rew), _numpy_or(terminated, term), _numpy_or(truncated, trunc)]
            moved = staging.to_device(raw, dts, self.device, stage=self.backend == "triton")
            record = ops.record_triton if self.backend == "triton" else ops.record_torch
            record(self, w, dict(zip(names, moved[:len(names)])), *moved[len(names):])
        self._t += 1
        if self._t < self.n:
            return None
        return self._emit((w + 1) % self.n, self.n)

    def _with_final_obs(self, nxt, fin):
        """next_obs with each done env's true final observation in its row (same-step
        autoreset): on the host when everything is there, else on the device."""
        if fin is None or fin[0] is None:
            return nxt
        dense, mask = fin
        host = all(isinstance(x, np.ndarray) or x.device.type == "cpu" for x in (nxt, dense, mask))
        obs_dt = self._fields["obs"][1]
        if host and obs_dt != torch.bfloat16:
            m = host_numpy(mask).astype(bool).reshape(-1, *([1] * (nxt.dim() - 1)))
            return np.where(m, host_numpy(dense), host_numpy(nxt))
        nb = self.device.type == "cuda"
        mask = mask.to(self.device, non_blocking=nb).view(-1, *([1] * (nxt.dim() - 1)))
        return torch.where(mask, dense.detach().to(self.device, obs_dt, non_blocking=nb),
                           nxt.detach().to(self.device, obs_dt, non_blocking=nb))

    def _emit(self, start: int, L: int):
        """(rows, valid) for the transitions that start in ring slot ``start`` (a host int),
        over the next L steps of the window (L <= n): fixed shapes, no host sync. On the host
        and torch paths obs, action and the extras are views of the windows."""
        emit = {"numba": self._ops.emit_numba, "triton": self._ops.emit_triton}.get(self.backend, self._ops.emit_torch)
        return emit(self, start, L)

    # ------------------------------------------------------------------ flush / reset
    def _flush(self, host_rows: bool = False):
        """``flush``; with ``host_rows``, the CPU path (numba) returns numpy rows and mask."""
        P = min(self._t, self.n - 1)
        out = None
        if P > 0 and self._fields is not None:
            n, t = self.n, self._t
            # pending step i (0 = oldest) sits in slot (t - P + i) % n; its window runs to the end
            parts = [self._emit((t - P + i) % n, P - i) for i in range(P)]
            cat = np.concatenate if isinstance(parts[0][1], np.ndarray) else torch.cat
            rows = {name: cat([p[0][name] for p in parts]) for name in parts[0][0]}
            valid = cat([p[1] for p in parts])
            out = (rows, valid)
        self._clear(keep_autoreset=True)
        return out if host_rows else _as_tensors(out)

    def flush(self):
        """Emit the transitions still pending in the windows (``num_envs * min(calls, n - 1)``
        rows, row ``i * num_envs + e`` = env e's i-th oldest pending step, ``(rows, valid)``), or
        ``None`` if none is pending; then empty the windows. Their k is cut at the episode's end or
        at the last recorded step; ``terminated`` is set only if the episode really terminated.
        The next-step autoreset flags are kept (see ``reset``)."""
        return self._flush()  # the rows are new arrays (concatenated), not views of the windows

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
        """All state: ints (config, call counter) and tensors (copies, on the CPU).
        Field windows are ``"field.<name>"`` ``[num_envs, n, *shape]``; their shapes and dtypes
        carry the spec."""
        cpu = lambda t: t.detach().to("cpu", copy=True)  # noqa: E731
        sd = {"version": _STATE_VERSION, "num_envs": self.num_envs, "n": self.n,
              "gamma": torch.tensor(self.gamma, dtype=torch.float64),
              "autoreset_mode": autoreset.AUTORESET_MODES.index(self.autoreset_mode), "t": self._t,
              "initialized": int(self._fields is not None),
              "reward": cpu(self._reward), "terminated": cpu(self._term), "done": cpu(self._done),
              "real": cpu(self._real), "prev_done": cpu(self._prev_done)}
        if self._fields is not None:
            for name, win in self._win.items():
                sd[f"field.{name}"] = cpu(win)
            sd["next_obs"] = cpu(self._next_obs)
        return sd

    def prepare_load(self, sd, reader: StateReader | None = None):
        """Check ``sd`` fully; return the function that commits it (nothing changes before)."""
        r = reader or StateReader(sd, "load_state_dict")
        E, n = self.num_envs, self.n
        r.same("version", _STATE_VERSION)
        r.same("num_envs", E)
        r.same("n", n)
        gamma = r.tensor("gamma", (), torch.float64)
        r.check(float(gamma) == self.gamma, "gamma", f"this NStep's {self.gamma!r}", float(gamma))
        mode = r.int("autoreset_mode", 0, len(autoreset.AUTORESET_MODES) - 1)
        r.check(autoreset.AUTORESET_MODES[mode] == self.autoreset_mode, "autoreset_mode",
                f"this NStep's {self.autoreset_mode!r}", autoreset.AUTORESET_MODES[mode])
        t = r.int("t", 0, 2 ** 62)
        init = r.int("initialized", 0, 1)
        new = {"reward": r.tensor("reward", (E, n), torch.float64, finite=True),
               "terminated": r.tensor("terminated", (E, n), torch.bool),
               "done": r.tensor("done", (E, n), torch.bool),
               "real": r.tensor("real", (E, n), torch.bool),
               "prev_done": r.tensor("prev_done", (E,), torch.bool)}
        fields = None
        if init:
            names = [k[len("field."):] for k in r.sd if isinstance(k, str) and k.startswith("field.")]
            fields = {}
            for name in names:
                v = r.get(f"field.{name}")
                r.check(isinstance(v, torch.Tensor) and v.dim() >= 2 and tuple(v.shape[:2]) == (E, n),
                        f"field.{name}", f"a tensor [{E}, {n}, ...]", type(v).__name__)
                fields[name] = (tuple(v.shape[2:]), v.dtype)
            r.check("obs" in fields and "action" in fields, "fields", "field.obs and field.action", list(fields))
            if self._fields is not None:
                r.check(fields == self._fields, "fields", self._fields, fields)
            wins = {name: r.tensor(f"field.{name}", (E, n, *fields[name][0]), fields[name][1]) for name in fields}
            nxt = r.tensor("next_obs", (E, n, *fields["obs"][0]), fields["obs"][1])
        else:
            r.check(t == 0, "t", "0 (the state has no field windows)", t)

        def commit():
            if fields is not None:
                if self._fields is None:
                    self._fields = fields
                    self._allocate()
                for name, v in wins.items():
                    self._win[name].copy_(v)
                self._next_obs.copy_(nxt)
            elif self._fields is not None:
                self._clear(keep_autoreset=True)
            self._reward.copy_(new["reward"])
            self._term.copy_(new["terminated"])
            self._done.copy_(new["done"])
            self._real.copy_(new["real"])
            self._prev_done.copy_(new["prev_done"])
            self._t = t
        return commit

    def load_state_dict(self, sd) -> None:
        """Restore ``state_dict()`` output into an NStep built with the same num_envs, n, gamma and
        autoreset_mode (and spec, if it was given). Checked fully before anything changes."""
        self.prepare_load(sd)()

    def __repr__(self) -> str:
        return (f"NStep(num_envs={self.num_envs}, n={self.n}, gamma={self.gamma}, "
                f"device={str(self.device)!r}, autoreset_mode={self.autoreset_mode!r}, "
                f"fields={None if self._fields is None else list(self._fields)})")


def _numpy_or(original, checked):
    """The caller's numpy array as it was given (staged as host data), else the checked tensor."""
    return original if isinstance(original, np.ndarray) else checked


def _as_tensors(out):
    """(rows, valid) with numpy arrays made tensors (views: the caller uses them at once)."""
    if out is None or not isinstance(out[1], np.ndarray):
        return out
    rows, valid = out
    return {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(v) for k, v in rows.items()}, \
        torch.from_numpy(valid)

"""Frames once: a storage that keeps each env's stream of single frames one time and rebuilds
``obs`` and ``next_obs`` frame stacks when rows are gathered (DESIGN.md section 11).

A pixel transition stored naively holds ``obs`` and ``next_obs`` as full stacks: every frame
8 times for a stack of 4. A buffer fed by ``step()`` knows each env's stream, so it can keep
every frame once and store, per row, two int64 *references* instead of the two stacks.

Layout
------
- ``frames``: one ring of ``F`` single frames per env, ``[E * F + 2, *frame_shape]`` on the
  device (row ``e * F + q % F`` holds env e's frame at stream position q; row ``E * F`` is the
  padding frame of fixed-padding stacks, row ``E * F + 1`` a trash row for masked writes).
  ``F = frames_per_env(capacity, E, S, n) = ceil(C / E) * (1 + 1/64) + n + S + 1``.
- the rows (``gpu_replay.storage.Storage``): ``obs`` and ``next_obs`` are int64 references
  ``ref = e << 48 | q << 8 | d`` (env e, stream position q of the stack's newest frame, and
  ``d = min(q - episode start, S - 1)``, how many older frames of the same episode the stack
  holds), plus ``action``, extras, ``reward``, ``discount``, ``terminated`` as usual. The
  n-step stage (``NStep``) is fed these references instead of the stacks: its k / return /
  discount / terminated logic runs unchanged on 8-byte fields.
- ``key_of_pos`` ``[E * F + 1]`` int64: the key of the row whose ``obs`` is at each stream
  position (to invalidate it when its frames are overwritten), -1 for none.
- per env: ``pos`` (next stream position), ``dlast`` (d of the last frame written),
  ``prev_done``; ``pad`` = [a first stack seen, "reset" padding consistent, fixed padding
  consistent].

The stream (per env, per ``step``; S = stack size)
---------------------------------------------------
- the first call after construction, ``clear()`` or ``flush()`` ("fresh") writes the S frames
  of ``obs`` (d = 0..S-1: the stack is kept exactly as given, whatever it holds);
- every call writes the newest frame of ``next_obs``; ``obs`` of a call is the previous
  call's ``next_obs``, already in the stream (checked on host inputs, see below);
- next-step autoreset (gymnasium's default): the done step writes the true last frame; the
  following reset step writes the new episode's first frame (d = 0). One frame per call;
- same-step autoreset: the done step writes the true last frame (``info["final_obs"]``) and
  then the new episode's first frame (d = 0): two frames that call;
- disabled autoreset: the done step writes the last frame; the next call (a new episode,
  ``obs`` from your ``reset``) writes ``obs``'s frame (d = 0), then ``next_obs``'s.

So the true final observation of every episode is in the stream, right after the
episode's previous frame: ``next_obs`` of a row is the stack at its k-th step, final or not.

Rebuilding a stack (gather): for ref (e, q, d) and stack slot j (0 = oldest), lag = S-1-j:
frame ``q - min(lag, d)`` of env e when padding is gymnasium's ``"reset"`` (positions before
the episode's first frame are that frame), else the padding row when lag > d (``"zero"`` or a
custom value: a fixed frame). One index array ``[2B, S]`` and one gather for obs and next_obs.

Padding is learned from the data: the first episode-start stack seen gives the candidate
fixed frame (its slot 0); each later one keeps "reset" consistent if its S-1 padding slots
equal its newest frame, and "fixed" if they equal the candidate. Both stay consistent only
when they give the same bytes, so either rebuilds those stacks exactly.

Validity
--------
A row with obs at position q needs positions ``q - (S - 1) .. newest`` of its env. With
``F`` as above, rows leave the row ring before that happens, as long as each call writes one
frame per env (next-step autoreset). Same-step and disabled autoreset write one extra frame
per episode and ``flush`` makes the next call fresh (S extra frames): then the oldest rows of
each env's stream lose their history first. The buffer keeps this exact, on the device:

- a row is added with ``valid=False`` if ``q - (S-1) < pos[e] - F`` already;
- when a call writes positions ``a .. b-1`` of env e (overwriting ``a - F .. b - 1 - F``),
  the rows whose obs is at ``a - F + S - 1 .. b - F + S - 2`` get priority 0
  (``zero_keys``: the leaves of live keys set to 0, their ancestors recomputed; an update of
  such a key is then dropped, as for any ``valid=False`` row). Rows with older obs were
  handled by earlier calls, so no row whose frames were overwritten is ever sampled.

Checks (what the buffer verifies for free, and what it cannot)
--------------------------------------------------------------
Shapes, dtypes and devices of every input are checked from metadata, as everywhere: the
stack must be on the leading axis, ``obs`` shaped ``[E, S, *frame]``. When ``obs``,
``next_obs``, the flags (and the final observations) are host data (numpy arrays, or CPU
tensors for a CUDA buffer: what gymnasium returns), the buffer also checks the contents
before anything is written, so that every stack it will ever return equals the one given:

- ``obs`` of each env equals its ``next_obs`` of the previous call (not after a fresh call,
  nor for an env starting a new episode with disabled autoreset);
- consecutive stacks overlap: ``next_obs[e][:-1] == obs[e][1:]`` (with the final observation
  for a same-step done env; not at a next-step reset step). A stack on another axis (e.g.
  ``np.moveaxis``, SB3's ``VecFrameStack``) fails here or at the shape check;
- each episode-start stack is padded as ``FrameStackObservation`` pads (copies of the first
  frame, or one fixed frame seen at every start).

A failed check raises ValueError and changes nothing. On device inputs (CUDA tensors) none
of this is checked (it would need a host sync); the stream is written as described and the
padding is learned on the device. Once a call has taken device inputs, the host has not seen
the whole stream, and the content checks stay off until ``clear()``.

Example (runnable)::

    >>> import numpy as np, torch
    >>> from gpu_replay import PrioritizedReplayBuffer
    >>> spec = {"obs": ((4, 84, 84), torch.uint8), "action": ((), torch.int64)}
    >>> rb = PrioritizedReplayBuffer(10_000, spec, n_step=3, num_envs=2, frame_stack=4)
    >>> obs = np.repeat(np.zeros((2, 1, 84, 84), np.uint8), 4, axis=1)  # reset stacks
    >>> for t in range(1, 6):                                            # as FrameStackObservation
    ...     nxt = np.concatenate([obs[:, 1:], np.full((2, 1, 84, 84), t, np.uint8)], axis=1)
    ...     keys = rb.step(obs, np.zeros(2, np.int64), np.ones(2), nxt, np.zeros(2, bool), np.zeros(2, bool))
    ...     obs = nxt
    >>> b = rb.sample(8)
    >>> b["obs"].shape, b["next_obs"].shape
    (torch.Size([8, 4, 84, 84]), torch.Size([8, 4, 84, 84]))
    >>> bool((b["next_obs"][:, -1, 0, 0] == b["obs"][:, -1, 0, 0] + 3).all())  # n = 3 steps on
    True
    >>> rb.nbytes // rb.capacity  # device bytes per transition, everything included
    7230

Paths
-----
``host`` (a CPU buffer): numpy writes and index math, one ``index_select`` for the gather.
``device`` (CUDA, torch or triton backend): fixed-shape torch ops on the device, host inputs
staged through one pinned buffer and one copy, no host sync, no data-dependent shape. On the
Triton path ``sample`` is 4 launches (draws, descent, the stored fields, and
``kernels/frames.py``: references, index math and the frames of every stack in one); ``step``
is ~60 small launches with next-step autoreset (~75 with the others: the sweep), ~20 more
while the device learns the padding (device inputs only). The sweep is skipped when it
provably has nothing to do (next-step autoreset, a ring of the default size, C rows since
the last fresh call), and so is the emission-time check. ``step`` is not CUDA-graph
capturable (it bookkeeps on the host); ``sample`` and ``update_priorities`` make no sync.
"""
from __future__ import annotations

import numpy as np
import torch

from . import autoreset, staging
from ._checks import StateReader, as_device, check_field, check_int, host_numpy, normalize_spec
from .nstep import NStep
from .storage import _NP_INT, _NP_OF, Storage, wide_rows

__all__ = ["FrameStorage", "frames_per_env", "make_parts", "zero_keys"]

E_SHIFT, P_SHIFT = 48, 8  # ref = e << 48 | q << 8 | d
P_MASK, D_MASK = (1 << 40) - 1, (1 << 8) - 1
MAX_STACK = 255
MAX_ENVS = 1 << 15
SLACK = 64  # frames per env: one more per SLACK rows (a few extra frames per episode are free)
_STATE_VERSION = 1
_FORCE_DEVICE_OPS = False  # tests: run the device path's torch ops on a CPU buffer
_OUTPUTS = ("reward", "next_obs", "discount", "terminated")


def frames_per_env(capacity: int, num_envs: int, stack: int, n: int) -> int:
    """Frames each env's ring holds: enough that with one frame per env per call rows leave
    the row ring before their frames are overwritten (ceil(C/E) + n + S - 1 would do), plus
    1/SLACK for the extra frame per episode of same-step / disabled autoreset."""
    per = -(-capacity // num_envs)
    return per + -(-per // SLACK) + n + stack + 1


def split_spec(spec, stack: int):
    """(frame shape, frame dtype, the n-step stage's spec with int64 references, the rows'
    user-facing spec) from a buffer spec whose ``obs`` is ``(S, *frame)``."""
    spec = normalize_spec(spec)
    for need in ("obs", "action"):
        if need not in spec:
            raise ValueError(f"spec: expected at least the fields 'obs' and 'action' (plus extras), got {list(spec)}")
    shape, dt = spec["obs"]
    if len(shape) < 1 or shape[0] != stack:
        raise ValueError(f"spec['obs']: expected the frame stack on the leading axis, shape ({stack}, *frame) for "
                         f"frame_stack={stack} (as gymnasium's FrameStackObservation gives it), got {shape}")
    if "next_obs" in spec and spec["next_obs"] != spec["obs"]:
        raise ValueError(f"spec['next_obs']: expected the same (shape, dtype) as 'obs' {spec['obs']}, "
                         f"got {spec['next_obs']}")
    ns_spec = {"obs": ((), torch.int64)}
    ns_spec.update({k: v for k, v in spec.items() if k not in ("obs", "next_obs")})
    return tuple(shape[1:]), dt, ns_spec


def make_parts(capacity: int, spec, frame_stack, n_step, gamma, num_envs, autoreset_mode, device, backend):
    """The n-step stage and the frame storage of a buffer built with ``frame_stack=``."""
    S = check_int(frame_stack, "frame_stack", 1, MAX_STACK)
    if n_step is None or num_envs is None:
        raise ValueError(f"frame_stack: expected n_step= and num_envs= too (frames are stored once per env "
                         f"stream, which step() feeds), got n_step={n_step!r}, num_envs={num_envs!r}")
    num_envs = check_int(num_envs, "num_envs", 1, MAX_ENVS)
    mode = autoreset.parse_mode(autoreset_mode)
    frame_shape, dt, ns_spec = split_spec(spec, S)
    # The stage sees references: same-step final observations are put in place by the storage,
    # so its own mode is "disabled" (identical but for that substitution).
    nstep = NStep(num_envs, n_step, gamma, device, spec=ns_spec, backend=backend,
                  autoreset_mode="next_step" if mode == "next_step" else "disabled")
    storage = FrameStorage(capacity, nstep.buffer_spec(), S, frame_shape, dt, num_envs, nstep.n, mode,
                           device, backend)
    return nstep, storage


def zero_keys(tree, keys) -> None:
    """[additive SumTree op] Priority 0 for the rows of the live keys among ``keys`` (int64;
    -1 and stale keys are ignored), ancestors recomputed: such a row is never sampled again
    and an update of its key is dropped (as for a row added with ``valid=False``).

    ``keys``: a numpy array (host trees: the host reads the counter for free) or a device
    tensor (no sync: the non-live entries are sent to the slot of a live one, with value 0,
    or to slot[0] with the value it holds, as ``update`` does)."""
    st, C = tree.state, tree.capacity
    c = tree.counter
    if isinstance(keys, np.ndarray):
        A, Fl = int(c.np[0]), int(c.np[1])
        k = keys[(keys >= max(A - C, Fl)) & (keys < A)]
        if k.size == 0:
            return
        slots = np.unique(k % C)
        st.sums.numpy()[st.leaf_offset + slots] = 0.0
        tree.ops.refresh(st, tree.scratch, torch.from_numpy(slots))
        return
    A, Fl = c.t[0], c.t[1]
    live = (keys >= torch.maximum(A - C, Fl)) & (keys < A)
    slot = torch.remainder(keys.clamp_min(0), C)
    leaves = st.leaves
    j = torch.argmax(live.to(torch.uint8)).view(1)
    anyl = live.any()
    first = slot[:1]
    tgt = torch.where(anyl, slot.index_select(0, j), first)
    val = torch.where(anyl, 0.0, leaves.index_select(0, first))
    leaves.index_copy_(0, torch.where(live, slot, tgt), torch.where(live, 0.0, val))
    tree.ops.refresh(st, tree.scratch, slot)


def _words(a8: np.ndarray) -> np.ndarray:
    """Bytes [..., B] (contiguous last axis) as the widest unsigned words dividing B."""
    for dt in (np.uint64, np.uint32, np.uint16):
        if a8.shape[-1] % np.dtype(dt).itemsize == 0:
            return a8.view(dt)
    return a8


def _np_raw(a, npdt) -> np.ndarray:
    """[E, S, ...] host data as contiguous bytes [E, S, frame_bytes] of the frames' dtype."""
    a = np.asarray(a)
    if a.dtype != npdt:
        a = a.astype(npdt)
    a = np.ascontiguousarray(a)
    return a.view(np.uint8).reshape(a.shape[0], a.shape[1], -1)


class FrameStorage:
    """The rows of a frame buffer (see the module docstring): a ``Storage`` of references and
    small fields, and one ring of single frames per env. Built by ``make_parts``; a buffer uses
    it through the storage interface (``spec``, ``prepare``/``write``, ``gather``, ``clear``,
    ``rows_state``/``load_rows``, ``nbytes``) and the frame calls (``step``, ``rows_valid``,
    ``register``, ``flushed``, ``frames_state``/``prepare_load``)."""

    def __init__(self, capacity: int, rows_spec: dict, stack: int, frame_shape: tuple, dtype: torch.dtype,
                 num_envs: int, n: int, autoreset_mode: str, device, backend: str):
        self.device = device = as_device(device)
        self.stack = S = stack
        self.num_envs = E = num_envs
        self.n = n
        self.frame_shape = tuple(frame_shape)
        self.dtype = dtype
        self.autoreset_mode = autoreset_mode
        self.rows_spec = dict(rows_spec)  # what the ring stores: references for obs / next_obs
        st_shape = (S, *self.frame_shape)
        self.spec = {k: ((st_shape, dtype) if k in ("obs", "next_obs") else v) for k, v in rows_spec.items()}
        self.inner = Storage(capacity, rows_spec, device, backend)
        self.capacity = capacity
        self.path = self.inner.path
        self.host = self.path == "host" and dtype in _NP_OF and not _FORCE_DEVICE_OPS
        self.F = F = frames_per_env(capacity, E, S, n)
        if E * F >= 1 << 40:
            raise ValueError(f"capacity: expected fewer than 2**40 frames in all, got {E * F}")
        self.pad_row, self.trash_row = E * F, E * F + 1
        self.frame_bytes = int(np.prod(self.frame_shape, dtype=np.int64)) * dtype.itemsize
        with torch.inference_mode(False):
            self.frames = torch.zeros((E * F + 2, *self.frame_shape), dtype=dtype, device=device)
            self.key_of_pos = torch.full((E * F + 1,), -1, dtype=torch.int64, device=device)
            self.pos = torch.zeros(E, dtype=torch.int64, device=device)
            self.dlast = torch.zeros(E, dtype=torch.int64, device=device)
            self.prev_done = torch.zeros(E, dtype=torch.bool, device=device)
            self.pad = torch.tensor([False, True, True]).to(device)  # seen, reset ok, fixed ok
        self._fw = wide_rows(self.frames, E * F + 2)  # frames as whole words
        self.fresh = True
        # rows added, and that count at the last fresh call: with next-step autoreset only a fresh
        # call writes extra frames, so the sweep has nothing to do once C rows came after it
        self._rows_total = self._fresh_mark = 0
        ar = torch.arange(E, dtype=torch.int64)
        self._base = (ar * F).to(device)
        self._eref = (ar << E_SHIFT).to(device)
        self._lag = torch.arange(S - 1, -1, -1, dtype=torch.int64).to(device)  # lag of stack slot j
        self._ar = {m: torch.arange(m, dtype=torch.int64, device=device) for m in (1, 2, S, S + 2)}
        self._ph = torch.zeros(E, dtype=torch.int64)  # a placeholder reference for NStep's checks
        self._npdt = _NP_OF.get(dtype)
        if self.host:
            self._fr8 = self.frames.numpy().view(np.uint8).reshape(E * F + 2, -1)
            self._pos_np, self._dlast_np = self.pos.numpy(), self.dlast.numpy()
            self._prev_np, self._pad_np = self.prev_done.numpy(), self.pad.numpy()
            self._kop_np = self.key_of_pos.numpy()
            self._base_np, self._eref_np = self._base.numpy(), self._eref.numpy()
            self._lag_np = self._lag.numpy()
        self._reset_mirror()

    # ------------------------------------------------------------------ storage interface
    @property
    def nbytes(self) -> int:
        """Device bytes: the rows, the frames, ``key_of_pos`` and the per-env state."""
        small = sum(t.numel() * t.element_size() for t in (self.pos, self.dlast, self.prev_done, self.pad,
                                                          self._base, self._eref, self._lag))
        return (self.inner.nbytes + self.frames.numel() * self.frames.element_size()
                + self.key_of_pos.numel() * 8 + small)

    def prepare(self, rows: dict) -> dict:
        return self.inner.prepare(rows)

    def write(self, rows: dict, n: int, counter, keys: bool = False):
        return self.inner.write(rows, n, counter, keys)

    def host_rows(self, batch):
        return None

    def rows_state(self, n: int) -> dict:
        return self.inner.rows_state(n)

    def load_rows(self, rows: dict, n: int) -> None:
        self.inner.load_rows(rows, n)

    def clear(self) -> None:
        self.inner.clear()
        self.frames.zero_()
        self.key_of_pos.fill_(-1)
        self.pos.zero_()
        self.dlast.zero_()
        self.prev_done.zero_()
        self.pad.copy_(torch.tensor([False, True, True]))
        self.fresh = True
        self._rows_total = self._fresh_mark = 0
        self._reset_mirror()

    def _reset_mirror(self) -> None:
        """The host's view of the stream, for the content checks (host inputs only)."""
        E = self.num_envs
        self._m_ok = True  # every call so far had host inputs: the host has seen the whole stream
        self._m_prev = None  # the previous call's next_obs, as bytes [E, S, frame_bytes]
        self._m_prev_done = np.zeros(E, dtype=bool)
        self._m_pad = [False, True, True]
        self._m_x = None  # the fixed padding candidate (bytes)

    # ------------------------------------------------------------------ gather
    def _arange(self, m: int) -> torch.Tensor:
        t = self._ar.get(m)
        if t is None:
            t = self._ar[m] = torch.arange(m, dtype=torch.int64, device=self.device)
        return t

    def stack_rows(self, refs):
        """Frame rows [R * S] of the stacks of ``refs`` (numpy on the host path, else a tensor)."""
        F = self.F
        if isinstance(refs, np.ndarray):
            e = refs >> E_SHIFT
            p = (refs >> P_SHIFT) & P_MASK
            d = refs & D_MASK
            lag = self._lag_np[None, :]
            idx = self._base_np[e][:, None] + (p[:, None] - np.minimum(lag, d[:, None])) % F
            if not self._pad_np[1]:  # fixed padding: slots before the episode's first frame
                idx = np.where(lag <= d[:, None], idx, self.pad_row)
            return idx.reshape(-1)
        from .kernels.frames import stack_index_torch
        return stack_index_torch(refs, self._base, self._lag, self.pad[1], F, self.pad_row)

    def gather(self, slots) -> dict[str, torch.Tensor]:
        """{field: rows at ``slots``} with ``obs`` / ``next_obs`` rebuilt as stacks [B, S, *frame]."""
        inner = self.inner.gather(slots)
        ro, rn = inner["obs"], inner["next_obs"]
        B, S = ro.shape[0], self.stack
        fw = self._fw
        if self.host:
            idx = torch.from_numpy(self.stack_rows(np.concatenate((ro.numpy(), rn.numpy()))))
            if 2 * B * S * fw.shape[1] * fw.element_size() >= 1 << 22:  # (huge pages, see Storage._rows_out)
                out = torch.from_numpy(np.empty((2 * B * S, fw.shape[1]), dtype=_NP_INT[fw.dtype]))
            else:
                out = torch.empty((2 * B * S, fw.shape[1]), dtype=fw.dtype)
            torch.index_select(fw, 0, idx, out=out)
        else:  # the stored references read at the slots, the index math and the copy: one launch on Triton
            from .kernels import frames as kf
            out = torch.empty((2 * B * S, fw.shape[1]), dtype=fw.dtype, device=self.device)
            ref_obs, ref_next = self.inner.data["obs"], self.inner.data["next_obs"]
            if isinstance(slots, np.ndarray):  # (a numba tree's draw, with the device ops forced in tests)
                slots = torch.from_numpy(slots)
            if self.path == "triton":
                kf.stacks_triton(fw, ref_obs, ref_next, slots, self.pad, S, self.F, self.pad_row, out)
            else:
                kf.stacks_torch(fw, ref_obs, ref_next, slots, self._base, self._lag, self.pad[1], self.F,
                                self.pad_row, out)
        st = out.view(torch.uint8).view(self.dtype).view(2, B, S, *self.frame_shape)
        return {k: st[0] if k == "obs" else st[1] if k == "next_obs" else inner[k] for k in self.spec}

    # ------------------------------------------------------------------ step
    def step(self, nstep: NStep, sampler, obs, action, reward, next_obs, terminated, truncated, info, final_obs,
             final_obs_mask, extra):
        """Check the stacks, plan this call's frames and references, feed the n-step stage the
        references (it checks the other fields first: a rejected call changes nothing), then
        write the frames and invalidate the rows whose frames they overwrite. Returns what the
        stage emits."""
        E, S = self.num_envs, self.stack
        term = nstep._check_flag("terminated", terminated)
        trunc = nstep._check_flag("truncated", truncated)
        shape = (S, *self.frame_shape)
        o = self._check_stack(obs, "obs", shape)
        x = self._check_stack(next_obs, "next_obs", shape)
        fin = autoreset.final_obs(self.autoreset_mode, E, term, trunc, info, final_obs, final_obs_mask,
                                  shape, self.dtype)
        same = self.autoreset_mode == "same_step"
        dense = fin[0] if same and fin is not None else None
        if dense is not None:  # an object array (info) or numpy: host data, made into a CPU tensor
            src = final_obs if final_obs is not None else info.get("final_obs") if info is not None else None
            dense = self._side(src, dense)
        sides = [self._side(obs, o), self._side(next_obs, x), self._side(terminated, term),
                 self._side(truncated, trunc)] + ([dense] if dense is not None else [])
        host_in = all(h for h, _ in sides)
        (_, o), (_, x), (_, te), (_, tr) = sides[:4]
        dense = dense[1] if dense is not None else None
        fresh = self.fresh
        if host_in:
            te, tr = te.astype(bool), tr.astype(bool)
            done = te | tr
            o8, x8 = _np_raw(o, self._npdt), _np_raw(x, self._npdt)
            f8 = _np_raw(dense, self._npdt) if dense is not None else (x8 if same else None)
            pad = self._host_checks(o8, x8, f8, done, fresh)
        if self.host:
            oref, nref, apply = self._plan_host(o8, x8, f8, done, fresh, sampler)
        else:
            told = (pad, self._m_pad, self._m_x) if host_in and self._m_ok else None  # the host knows the padding
            oref, nref, apply = self._plan_device(o, x, dense, te, tr, fresh, sampler, told)
        out = nstep._step(oref, action, reward, nref, terminated, truncated, None, None, None, extra)
        # ----- everything checked and recorded: the frames
        apply()
        if host_in:
            self._commit_mirror(x8, done, pad)
        else:
            self._m_ok = False
        if self.host:  # the host path's padding state is the host's
            if self._m_pad[0] and not self._pad_np[0] and self._m_x is not None:
                self._fr8[self.pad_row] = self._m_x
            self._pad_np[:] = self._m_pad
        self.fresh = False
        return out

    def _side(self, orig, checked):
        """(is host data, a numpy array if so, else the device tensor)."""
        if isinstance(orig, np.ndarray) and orig.dtype != object:
            return True, orig
        if isinstance(orig, np.ndarray) or self.host or self._is_host(checked):
            return True, host_numpy(checked)
        return False, checked

    def _check_stack(self, value, name: str, shape: tuple) -> torch.Tensor:
        try:
            t = check_field(value, f"step: {name}", (self.num_envs,), shape, self.dtype)
        except ValueError as e:
            raise ValueError(f"{e} (frame_stack={self.stack}: stacks on the leading axis, oldest first, as "
                             f"gymnasium's FrameStackObservation gives them)") from None
        if t.layout != torch.strided or t.device.type not in ("cpu", self.device.type):
            raise ValueError(f"step: {name}: expected a dense tensor on the CPU or on {self.device}, got layout "
                             f"{t.layout} on {t.device}")
        return t

    def _is_host(self, t) -> bool:
        """Host data: numpy, or a CPU tensor for a buffer on another device (as ``staging`` sees it)."""
        if isinstance(t, np.ndarray):
            return True
        return t.device.type == "cpu" and self.device.type != "cpu" and t.dtype in _NP_OF

    # ------------------------------------------------------------------ host checks
    def _host_checks(self, o8, x8, f8, done, fresh):
        """Every content check on host inputs (before anything changes); returns the padding
        state to commit. See the module docstring for what is checked."""
        E, S, mode = self.num_envs, self.stack, self.autoreset_mode
        if not self._m_ok:
            return None
        prev_done = self._m_prev_done
        ow, xw = _words(o8), _words(x8)  # (compared as whole words: 8x fewer elements)
        if not fresh and self._m_prev is not None:
            cont = ~prev_done if mode == "disabled" else np.ones(E, dtype=bool)
            bad = np.flatnonzero(cont & (ow != _words(self._m_prev)).any(axis=(1, 2)))
            if bad.size:
                raise ValueError(f"step: obs: expected each env's obs to be the next_obs it gave at the previous step "
                                 f"(a frame buffer stores each frame once), got a different obs for env(s) "
                                 f"{bad.tolist()}; after env.reset() call flush() (or clear()) first")
        if S == 1:
            return self._m_pad, self._m_x
        nt = xw if mode != "same_step" or not done.any() else np.where(done[:, None, None], _words(f8), xw)
        chk = ~prev_done if mode == "next_step" else np.ones(E, dtype=bool)
        bad = np.flatnonzero(chk & (nt[:, :-1] != ow[:, 1:]).any(axis=(1, 2)))
        if bad.size:
            what = "final_obs" if mode == "same_step" and done[bad[0]] else "next_obs"
            raise ValueError(f"step: {what}: expected consecutive frame stacks to overlap ({what}[e][:-1] == "
                             f"obs[e][1:]: frame_stack={S} stacks on the leading axis, oldest first, as gymnasium's "
                             f"FrameStackObservation gives them), got env(s) {bad.tolist()} where they do not: is "
                             f"the stack on another axis (np.moveaxis, SB3's VecFrameStack concatenating channels)?")
        if mode == "next_step":
            who, R = np.flatnonzero(prev_done), x8
        elif mode == "same_step":
            who, R = np.flatnonzero(done), x8
        else:
            who, R = (np.flatnonzero(prev_done), o8) if not fresh else (np.zeros(0, dtype=np.int64), o8)
        if not who.size:
            return self._m_pad, self._m_x
        pad, xpad = list(self._m_pad), self._m_x
        for e in who:
            st = R[e]
            if not pad[0]:
                pad[0], xpad = True, st[0].copy()
            r_ok = bool((st[:-1] == st[-1]).all())
            f_ok = bool((st[:-1] == xpad).all())
            if not ((pad[1] and r_ok) or (pad[2] and f_ok)):
                name = "obs" if mode == "disabled" else "next_obs"
                raise ValueError(f"step: {name}: expected env {int(e)}'s first stack of an episode padded as "
                                 f"gymnasium's FrameStackObservation pads (all {S - 1} older slots copies of the first "
                                 f"frame for padding_type='reset', or the same fixed frame at every episode start for "
                                 f"'zero' or a custom value), got padding that matches neither what this stack's "
                                 f"newest frame nor the earlier episodes' starts imply (is the stack on another axis?)")
            pad[1], pad[2] = pad[1] and r_ok, pad[2] and f_ok
        return pad, xpad

    def _commit_mirror(self, x8, done, plan) -> None:
        if not self._m_ok:
            return
        if self._m_prev is None:
            self._m_prev = np.empty_like(x8)
        np.copyto(self._m_prev, x8)
        if self.autoreset_mode != "same_step":
            self._m_prev_done = done.copy()
        self._m_pad, self._m_x = plan

    # ------------------------------------------------------------------ host path
    def _plan_host(self, o8, x8, f8, done, fresh, sampler):
        """(obs refs, next_obs refs, the function that writes the frames) on the host path."""
        E, S, F, mode = self.num_envs, self.stack, self.F, self.autoreset_mode
        fr, pos, dlast, prev, base = self._fr8, self._pos_np, self._dlast_np, self._prev_np, self._base_np
        if fresh:  # the whole obs stack, as given
            p0, dl0 = pos + S, np.full(E, S - 1, dtype=np.int64)
        elif mode == "disabled":  # new episodes: obs is the reset stack
            p0, dl0 = pos + prev, np.where(prev, 0, dlast)
        else:
            p0, dl0 = pos, dlast
        oref = self._eref_np | ((p0 - 1) << P_SHIFT) | dl0
        d = np.minimum(dl0 + 1, S - 1)
        if mode == "next_step":
            d[prev] = 0  # a reset step: next_obs is the new episode's first stack
        nref = self._eref_np | (p0 << P_SHIFT) | d

        def apply():
            a = pos.copy()
            if fresh:
                rows = base[:, None] + (pos[:, None] + np.arange(S)) % F
                fr[rows.reshape(-1)] = o8.reshape(E * S, -1)
            elif mode == "disabled" and prev.any():
                m = np.flatnonzero(prev)
                fr[base[m] + pos[m] % F] = o8[m, -1]
            src = x8[:, -1]
            if mode == "same_step" and done.any():
                src = np.where(done[:, None], f8[:, -1], src)  # the true final frame
            fr[base + p0 % F] = src
            pos[:] = p0 + 1
            dlast[:] = d
            if mode == "same_step":
                if done.any():  # then the new episode's first frame
                    m = np.flatnonzero(done)
                    fr[base[m] + pos[m] % F] = x8[m, -1]
                    pos[m] += 1
                    dlast[m] = 0
            else:
                prev[:] = done
            if fresh:
                self._fresh_mark = self._rows_total
            if self._may_sweep():
                self._sweep_host(a, pos, sampler)
        return oref, nref, apply

    def _sweep_host(self, a, b, sampler) -> None:
        """Zero the rows whose obs is at a - F + S - 1 .. b - F + S - 2 of each env (see Validity)."""
        F, S = self.F, self.stack
        if (b - F + S - 1 <= 0).all():
            return
        M = int((b - a).max())
        j = np.arange(M)[None, :]
        q = a[:, None] - F + S - 1 + j
        ok = (j < (b - a)[:, None]) & (q >= 0)
        keys = self._kop_np[np.where(ok, self._base_np[:, None] + q % F, self.num_envs * F)].reshape(-1)
        c = sampler.trees()[0].counter.np
        if keys.max() >= max(int(c[0]) - self.capacity, int(c[1])):  # some may be live
            zero_keys(sampler.trees()[0], keys)

    # ------------------------------------------------------------------ device path
    def _plan_device(self, o, x, dense, te, tr, fresh, sampler, told):
        """The device path (inputs: numpy arrays, staged in one copy, or device tensors):
        (obs refs, next_obs refs, the function that writes the frames), fixed-shape torch ops.
        ``told``: the padding state the host worked out (host inputs, every call so far), else
        None: the device learns it from the stacks."""
        E, S, F, mode = self.num_envs, self.stack, self.F, self.autoreset_mode
        same = mode == "same_step"
        learn = told is None and S > 1
        need_obs = fresh or mode == "disabled"
        ins = [x if (learn and mode != "disabled") else x[:, -1], te, tr]
        dts = [self.dtype, torch.bool, torch.bool]
        if need_obs:
            ins.append(o if fresh or learn else o[:, -1:])
            dts.append(self.dtype)
        if same:
            ins.append(dense[:, -1] if dense is not None else x[:, -1])
            dts.append(self.dtype)
        push = None
        if told is not None and told[0] is not None and (list(told[0][0]) != list(told[1]) or
                                                        (told[0][1] is not None and told[2] is None)):
            (flags, xpad), push = told[0], len(ins)  # the padding changed: its flags (and frame) go too
            ins += [np.array(flags, dtype=bool), xpad if xpad is not None else np.zeros(self.frame_bytes, np.uint8)]
            dts += [torch.bool, torch.uint8]
        moved = staging.to_device(ins, dts, self.device, stage=self.path == "triton")
        xs, te, tr = moved[0], moved[1], moved[2]
        od = moved[3] if need_obs else None
        fl = moved[4 if need_obs else 3] if same else None
        W = self._fw.shape[1]
        x_last = wide_rows(xs.contiguous(), E * (S if xs.dim() == len(self.frame_shape) + 2 else 1)).view(E, -1, W)
        x_full = x_last if x_last.shape[1] == S else None
        x_last = x_last[:, -1]
        o_full = wide_rows(od.contiguous(), od.shape[0] * od.shape[1]).view(E, -1, W) if od is not None else None
        done = te | tr
        fw, pos, dlast, prev, base = self._fw, self.pos, self.dlast, self.prev_done, self._base
        if fresh:
            p0, dl0 = pos + S, torch.full_like(dlast, S - 1)
        elif mode == "disabled":
            p0, dl0 = pos + prev, dlast.masked_fill(prev, 0)
        else:
            p0, dl0 = pos, dlast
        oref = self._eref | ((p0 - 1) << P_SHIFT) | dl0
        d = (dl0 + 1).clamp_max(S - 1)
        if mode == "next_step":
            d = d.masked_fill(prev, 0)
        nref = self._eref | (p0 << P_SHIFT) | d

        def apply():
            a = pos.clone()
            if fresh:
                rows = base[:, None] + torch.remainder(pos[:, None] + self._arange(S), F)
                fw.index_copy_(0, rows.view(-1), o_full.reshape(E * S, W))
            elif mode == "disabled":
                fw.index_copy_(0, torch.where(prev, base + torch.remainder(pos, F), self.trash_row), o_full[:, -1])
            src = torch.where(done[:, None], wide_rows(fl.contiguous(), E), x_last) if same else x_last
            fw.index_copy_(0, base + torch.remainder(p0, F), src)
            if push is not None:
                self.pad.copy_(moved[push])
                fw[self.pad_row].copy_(moved[push + 1].view(fw.dtype))
            if learn:  # the padding, learned on the device from the episode-start stacks
                if mode == "next_step":
                    self._learn_pad(x_full, prev)
                elif same:
                    self._learn_pad(x_full, done)
                elif not fresh:
                    self._learn_pad(o_full, prev)
            torch.add(p0, 1, out=pos)
            dlast.copy_(d)
            if same:
                fw.index_copy_(0, torch.where(done, base + torch.remainder(pos, F), self.trash_row), x_last)
                pos.add_(done)
                dlast.masked_fill_(done, 0)
            else:
                prev.copy_(done)
            if fresh:
                self._fresh_mark = self._rows_total
            if self._may_sweep():
                self._sweep_device(a, S + 2 if fresh else (2 if mode != "next_step" else 1), sampler)
        return oref, nref, apply

    def _may_sweep(self) -> bool:
        """Whether this call's frames can overwrite those of a stored row (see Validity): with
        next-step autoreset only the rows added before the last fresh call, until C more came."""
        if self.autoreset_mode != "next_step" or self.F < -(-self.capacity // self.num_envs) + self.n + self.stack:
            return True  # (a ring smaller than frames_per_env's: always)
        return self._rows_total - self._fresh_mark < self.capacity

    def _learn_pad(self, R, m) -> None:
        """Device twin of the host's padding inference over the stacks R [E, S, W] of the envs
        in m (episode starts): no sync, fixed shapes."""
        head = R[:, :-1]
        is_r = (head == R[:, -1:]).all(2).all(1)
        j = torch.argmax(m.to(torch.uint8)).view(1)
        anym = m.any()
        padw = self._fw[self.pad_row]
        take = anym & ~self.pad[0]
        padw.copy_(torch.where(take, R.index_select(0, j)[0, 0], padw))
        is_f = (head == padw).all(2).all(1)
        ok = torch.stack(((is_r | ~m).all(), (is_f | ~m).all()))
        self.pad[1:].logical_and_(ok)
        self.pad[:1].logical_or_(anym.view(1))

    def _sweep_device(self, a, M: int, sampler) -> None:
        """Device twin of ``_sweep_host``: [E, M] positions, masked to those written."""
        F, S = self.F, self.stack
        j = self._arange(M)[None, :]
        q = a[:, None] - F + S - 1 + j
        ok = (j < (self.pos - a)[:, None]) & (q >= 0)
        idx = torch.where(ok, self._base[:, None] + torch.remainder(q, F), self.num_envs * F)  # (last: -1)
        zero_keys(sampler.trees()[0], self.key_of_pos.index_select(0, idx.view(-1)))

    # ------------------------------------------------------------------ rows
    def rows_valid(self, rows: dict, valid):
        """The emitted rows' validity: False where the frames of their obs are already gone."""
        ref = rows["obs"]
        S, F = self.stack, self.F
        if self.autoreset_mode == "next_step" and F >= self.n + S + 1:
            return valid  # one frame per env per call: a row's frames are all there when it is emitted
        if self.host:
            r = ref.numpy() if isinstance(ref, torch.Tensor) else ref
            e = r >> E_SHIFT
            ok = torch.from_numpy(((r >> P_SHIFT) & P_MASK) - (S - 1) >= self._pos_np[e] - F)
        else:
            e = ref >> E_SHIFT
            ok = ((ref >> P_SHIFT) & P_MASK) - (S - 1) >= self.pos.index_select(0, e) - F
        return ok if valid is None else valid & ok

    def register(self, rows: dict, keys: torch.Tensor) -> None:
        """key_of_pos[e, q] = the key of the row whose obs is at position q of env e."""
        ref = rows["obs"]
        self._rows_total += ref.shape[0]
        if self.host:
            r = ref.numpy() if isinstance(ref, torch.Tensor) else ref
            self._kop_np[self._base_np[r >> E_SHIFT] + ((r >> P_SHIFT) & P_MASK) % self.F] = keys.numpy()
        else:
            at = self._base.index_select(0, ref >> E_SHIFT) + torch.remainder((ref >> P_SHIFT) & P_MASK, self.F)
            self.key_of_pos.index_copy_(0, at, keys)

    def flushed(self) -> None:
        """After ``flush``: the next call writes its whole obs stack again."""
        self.fresh = True

    # ------------------------------------------------------------------ checkpoints
    def frames_state(self) -> dict:
        """The frames and every piece of stream state, as CPU tensors and ints (a sync)."""
        cpu = lambda t: t.detach().to("cpu", copy=True)  # noqa: E731
        E, S = self.num_envs, self.stack
        prev = self._m_prev if self._m_prev is not None else np.zeros((E, S, self.frame_bytes), np.uint8)
        x = self._m_x if self._m_x is not None else np.zeros(self.frame_bytes, np.uint8)
        return {"version": _STATE_VERSION, "num_envs": E, "stack": S, "per_env": self.F,
                "frame_shape": list(self.frame_shape), "dtype": str(self.dtype).replace("torch.", ""),
                "autoreset_mode": self.autoreset_mode, "fresh": int(self.fresh),
                "frames": cpu(self.frames), "key_of_pos": cpu(self.key_of_pos), "pos": cpu(self.pos),
                "dlast": cpu(self.dlast), "prev_done": cpu(self.prev_done), "pad": cpu(self.pad),
                "mirror_ok": int(self._m_ok), "mirror_has_prev": int(self._m_prev is not None),
                "mirror_prev": torch.from_numpy(prev.copy()),
                "mirror_prev_done": torch.from_numpy(self._m_prev_done.copy()),
                "mirror_pad": torch.tensor(self._m_pad), "mirror_has_x": int(self._m_x is not None),
                "mirror_x": torch.from_numpy(x.copy())}

    def prepare_load(self, r: StateReader, shift: int):
        """Check a ``frames_state()`` fully; return the function that commits it (keys in
        ``key_of_pos`` shifted by the buffer's key shift)."""
        E, S, F = self.num_envs, self.stack, self.F
        r.same("version", _STATE_VERSION)
        r.same("num_envs", E)
        r.same("stack", S)
        r.same("per_env", F)
        r.same("frame_shape", list(self.frame_shape))
        r.same("dtype", str(self.dtype).replace("torch.", ""))
        r.same("autoreset_mode", self.autoreset_mode)
        fresh = r.int("fresh", 0, 1)
        frames = r.tensor("frames", (E * F + 2, *self.frame_shape), self.dtype)
        kop = r.tensor("key_of_pos", (E * F + 1,), torch.int64)
        r.check(bool((kop >= -1).all()) and int(kop[-1]) == -1, "key_of_pos", "keys >= -1 and -1 last",
                "other values")
        pos = r.tensor("pos", (E,), torch.int64, nonneg=True)
        r.check(bool((pos <= P_MASK).all()), "pos", "positions below 2**40", "larger ones")
        dlast = r.tensor("dlast", (E,), torch.int64, nonneg=True)
        r.check(bool((dlast <= S - 1).all()), "dlast", f"values in [0, {S - 1}]", dlast.tolist())
        prev = r.tensor("prev_done", (E,), torch.bool)
        pad = r.tensor("pad", (3,), torch.bool)
        m_ok = r.int("mirror_ok", 0, 1)
        m_has_prev = r.int("mirror_has_prev", 0, 1)
        m_prev = r.tensor("mirror_prev", (E, S, self.frame_bytes), torch.uint8)
        m_prev_done = r.tensor("mirror_prev_done", (E,), torch.bool)
        m_pad = r.tensor("mirror_pad", (3,), torch.bool)
        m_has_x = r.int("mirror_has_x", 0, 1)
        m_x = r.tensor("mirror_x", (self.frame_bytes,), torch.uint8)

        def commit():
            self.frames.copy_(frames)
            self.key_of_pos.copy_(torch.where(kop >= 0, kop + shift, kop))
            self.pos.copy_(pos)
            self.dlast.copy_(dlast)
            self.prev_done.copy_(prev)
            self.pad.copy_(pad)
            self.fresh = bool(fresh)
            self._rows_total = self._fresh_mark = 0  # (sweeps on for the next C rows: whatever came before)
            self._m_ok = bool(m_ok)
            self._m_prev = m_prev.numpy().copy() if m_has_prev else None
            self._m_prev_done = m_prev_done.numpy().copy()
            self._m_pad = [bool(v) for v in m_pad.tolist()]
            self._m_x = m_x.numpy().copy() if m_has_x else None
        return commit

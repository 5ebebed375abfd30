"""The K-ary sum tree: a small state of device tensors, functions over it, a thin class on top.

Layout (``TreeState``): the levels stored contiguously in one float64 vector, root first.
Level D holds the leaves (one per slot, padded to a multiple of K with zeros); level l < D
has one node per K nodes of level l+1, also padded to a multiple of K, so the children of
node j at level l are row j of level l+1 viewed as [-1, K]. A parallel vector holds, for
the internal levels, the min over positive leaves below each node (the IS-weight
normaliser). ``maxes`` = [running max of the raw |d| + eps, running max priority],
``counters`` = [NaN/inf TD errors replaced, updates dropped]. The device work is done by the
backend's ops (``gpu_replay.kernels``); each backend keeps its own scratch beside the state.
"""
from __future__ import annotations

import functools
import math
import threading
from typing import NamedTuple

import numpy as np
import torch

from . import kernels as _k
from ._backend import resolve_backend
from ._checks import StateReader, as_device, check_choice, check_float, check_int, check_keys, check_mask, constant_to
from .keys import KeyCounter
from .kernels._math import hyper_values

DEFAULT_FANOUT = 16  # by measurement (bench/core.py --fanout 16 32 64 on the CPU)
MAX_FANOUT = 1024  # the Triton kernels loop over the K children at run time: compile time does not grow with K


class Sample(NamedTuple):
    """What every sampler returns, all on the buffer's device: ``slots`` (int64, where the
    rows are), ``keys`` (int64, for ``update_priorities``), ``priorities`` (float64 p_i, None
    for uniform replay) and ``weights`` (float32 IS weights, None for uniform replay)."""
    slots: torch.Tensor
    keys: torch.Tensor
    priorities: torch.Tensor | None
    weights: torch.Tensor | None


class TreeState:
    """The layout numbers and the tree's tensors; the kernels read and write these in place."""

    def __init__(self, capacity: int, fanout: int, alpha: float, eps: float, device: torch.device):
        self.capacity = capacity
        self.fanout = fanout
        self.log2k = fanout.bit_length() - 1
        counts = [capacity]  # nodes in use per level, leaves first
        while counts[-1] > 1 or len(counts) == 1:
            counts.append(-(-counts[-1] // fanout))
        counts.reverse()
        self.depth = len(counts) - 1
        self.sizes = [1] + [fanout * counts[lv - 1] for lv in range(1, self.depth + 1)]
        self.offsets = [0]
        for s in self.sizes[:-1]:
            self.offsets.append(self.offsets[-1] + s)
        self.leaf_offset = self.offsets[-1]
        self.alpha, self.eps = float(alpha), float(eps)
        self.hyper = hyper_values(self.alpha, self.eps)  # [alpha, eps, raw lo, raw hi, P_MIN, P_MAX]
        self.sums = torch.zeros(self.leaf_offset + self.sizes[-1], dtype=torch.float64, device=device)
        self.mins = torch.full((self.leaf_offset,), math.inf, dtype=torch.float64, device=device)
        self.maxes = torch.ones(2, dtype=torch.float64, device=device)
        self.counters = torch.zeros(2, dtype=torch.int64, device=device)
        # constants the kernels read (copied without a host sync)
        self.offsets_t = constant_to(torch.tensor(self.offsets, dtype=torch.int64), device)
        self.hyper_t = constant_to(torch.tensor(self.hyper, dtype=torch.float64), device)

    @property
    def leaves(self) -> torch.Tensor:
        return self.sums[self.leaf_offset:self.leaf_offset + self.capacity]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The state a checkpoint holds (the internal levels are rebuilt from the leaves)."""
        return {"leaves": self.leaves, "maxes": self.maxes, "counters": self.counters}


def check_state(st: TreeState, live: int | None = None) -> float:
    """Largest relative difference between the stored sums and a float64 recomputation from
    the leaves (0.0 when every level is exactly the left-to-right sum of its children), after
    checking the min tree, the padding, the maxima, and that no value is negative, NaN or inf
    (math.inf on any such violation). ``live``: slots at or past it must be 0 (a buffer that
    has not filled its ring). Reads the tree back to the host."""
    sums = st.sums.detach().to("cpu")
    if not bool(torch.isfinite(sums).all()) or bool((sums < 0).any()):
        return math.inf
    maxes = st.maxes.detach().to("cpu")
    if not bool(torch.isfinite(maxes).all()) or bool((maxes <= 0).any()):
        return math.inf
    leaves = sums[st.leaf_offset:]
    if (leaves[st.capacity:] != 0).any() or (live is not None and (leaves[live:st.capacity] != 0).any()):
        return math.inf
    worst = 0.0
    child = leaves
    child_min = torch.where(leaves > 0, leaves, math.inf)
    for lv in range(st.depth - 1, -1, -1):
        rows = child.view(-1, st.fanout)
        want = torch.cumsum(rows, 1)[:, -1]
        want_min = child_min.view(-1, st.fanout).amin(1)
        level = sums[st.offsets[lv]:st.offsets[lv] + st.sizes[lv]]
        mins = st.mins.detach().to("cpu")[st.offsets[lv]:st.offsets[lv] + st.sizes[lv]]
        n = want.shape[0]
        if not torch.equal(mins[:n], want_min) or (level[n:] != 0).any():
            return math.inf
        diff = float(((level[:n] - want).abs() / want.abs().clamp_min(1e-300)).max())
        if not math.isfinite(diff):
            return math.inf
        worst = max(worst, diff)
        child = level
        child_min = mins
        if lv > 0 and not bool((mins[n:] == math.inf).all()):
            return math.inf
    return worst


def _locked(method):
    """Run a public method under the tree's lock (a buffer shares its own lock with its tree)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)
    return run


class SumTree:
    """Prioritized-replay priorities in a device-resident K-ary sum tree, with the key counter.

    Keys: ``add(n)`` hands out the next n int64 keys (monotonic, never reused); a key's slot
    is ``key % capacity``; see ``gpu_replay.keys`` for which keys are live.

    Math (Schaul et al. 2016):

    - priority p_i = (|d_i| + eps) ** alpha, clamped to [2**-500, 2**500] (so the sums stay
      finite and every valid row has p > 0); a new key enters with p = m ** alpha, m the
      running max of |d| + eps seen so far (1.0 at the start), so it is replayed soon;
    - P(i) = p_i / sum_j p_j; IS weight w_i = (N P(i)) ** -beta / max_j (N P(j)) ** -beta
      = (p_i / p_min) ** -beta with ``normalize="global"`` (p_min over live, positive
      leaves), or divided by the batch's max weight with ``normalize="batch"``;
    - ``update``: a stale key (its row overwritten or cleared since), a key never handed out,
      and a key whose row was added with ``valid=False`` are dropped and counted; NaN and
      inf TD errors are replaced by the running max and counted; negative TD errors are
      ordinary (|d| is used); for a key repeated in one call, the last write wins.

    Sampling is stratified: u_i = (i + r_i) * total / B with r_i ~ U[0, 1) drawn from
    ``generator`` (the device's default generator if None). A leaf with priority 0 is never
    returned. If every stored row has priority 0 (all added with ``valid=False``) there is
    nothing to sample: on the CPU ``sample`` raises; on CUDA, where checking would wait for
    the device, it returns keys -1 with weights 0. Every call is asynchronous on CUDA: it
    enqueues kernels on the current stream and never waits for the device.

    Example::

        >>> import torch
        >>> from gpu_replay import SumTree
        >>> tree = SumTree(1000, fanout=16)
        >>> keys = tree.add(8)                       # keys 0..7, priority 1.0 each
        >>> tree.update(keys[:2], torch.tensor([3.0, -0.5]))
        >>> s = tree.sample(4, beta=0.4, generator=torch.Generator().manual_seed(0))
        >>> s.keys.shape, float(s.weights.max()), bool((s.priorities > 0).all())
        (torch.Size([4]), 1.0, True)
    """

    def __init__(self, capacity: int, fanout: int = DEFAULT_FANOUT, alpha: float = 0.6, eps: float = 1e-6,
                 device=None, backend: str = "auto", counter: KeyCounter | None = None):
        capacity = check_int(capacity, "capacity", 1, 2 ** 40)
        fanout = check_int(fanout, "fanout", 2, MAX_FANOUT)
        if fanout & (fanout - 1):
            raise ValueError(f"fanout: expected a power of two in [2, {MAX_FANOUT}], got {fanout}")
        alpha = check_float(alpha, "alpha", 0.0, 16.0)
        eps = check_float(eps, "eps", 0.0, lo_open=True)
        self.device = as_device(device)
        self.backend = resolve_backend(backend, self.device)
        self.state = TreeState(capacity, fanout, alpha, eps, self.device)
        self.ops = _k.backend(self.backend)
        self.scratch = self.ops.prepare(self.state)
        # the key counter: this tree's own, or (a uniform buffer's validity tree) its owner's
        host = self.device.type == "cpu" and self.backend != "triton"  # the Triton path never reads the host
        self.counter = counter if counter is not None else KeyCounter(capacity, self.device, host)
        self.lock = threading.RLock()
        self._sums_np = self.state.sums.numpy() if host else None
        self._draws: dict[int, tuple] = {}  # numba backend: reused draw buffers by batch size
        # numba backend: fast(keys, td) -> bool, one compiled call after metadata checks
        self._update_fast = self.ops.update_fast(self.state, self.scratch, self.counter) \
            if self.backend == "numba" else None

    @property
    def capacity(self) -> int:
        return self.state.capacity

    @property
    def fanout(self) -> int:
        return self.state.fanout

    @property
    def alpha(self) -> float:
        return self.state.alpha

    @property
    def eps(self) -> float:
        return self.state.eps

    def __len__(self) -> int:
        """Rows stored (reads the device on CUDA: a sync)."""
        return self.counter.live()

    # ------------------------------------------------------------------ the three calls
    @_locked
    def add(self, n: int, valid=None) -> torch.Tensor:
        """Hand out the next n keys and enter them with the running max priority (0 where
        ``valid`` is False: such a row is stored but never sampled). Returns keys [n]."""
        n = check_int(n, "n", 1)
        return self._add(n, check_mask(valid, n, self.device))

    def _add(self, n: int, valid: torch.Tensor | None) -> torch.Tensor:
        """``add`` after the checks (``valid`` on the device or None)."""
        keys = self.ops.insert(self.state, self.scratch, self.counter, n, valid)
        self.counter.seen_rows = True
        return keys

    @_locked
    def update(self, keys, td_errors, strict: bool = False) -> None:
        """Set p = (|d| + eps) ** alpha for live keys (see the class docstring for the rules).
        ``strict=True`` raises ValueError on NaN/inf instead of replacing them (this reads
        one flag back from the device: a sync)."""
        if strict or self._update_fast is None or not self._update_fast(keys, td_errors):
            keys, td = check_keys(keys, td_errors, self.device)
            self._update(keys, td, strict)

    def _update(self, keys: torch.Tensor, td: torch.Tensor, strict: bool = False) -> None:
        if strict and not bool(torch.isfinite(td).all()):
            raise ValueError("td_errors: expected finite TD errors (strict=True), got NaN or inf; "
                             "nothing was updated")
        self.ops.update(self.state, self.scratch, self.counter, keys, td)

    @_locked
    def sample(self, batch_size: int, beta=0.4, generator: torch.Generator | None = None,
               normalize: str = "global") -> Sample:
        """Draw ``batch_size`` keys with P(i) = p_i / sum p (stratified). ``beta`` is a float in
        [0, 1] or a float device tensor (read on the device; a CUDA graph replays with its
        current value). Returns a ``Sample``."""
        batch_size = check_int(batch_size, "batch_size", 1, 2 ** 31 - 1)
        beta = check_beta(beta, self.device)
        check_choice(normalize, "normalize", ("global", "batch"))
        s = self._sample(batch_size, beta, generator, normalize)
        return s._replace(slots=torch.from_numpy(s.slots)) if isinstance(s.slots, np.ndarray) else s

    def _sample(self, batch_size: int, beta, generator, normalize: str) -> Sample:
        """``sample`` after the checks. On the numba backend ``slots`` is a numpy array (the
        storage gathers with it; internal use only)."""
        self.check_nonempty()
        if self.backend == "numba":  # the same draws as torch.rand, into a reused numpy-backed tensor
            r_np, r = self._draws.get(batch_size) or self._draw_buffer(batch_size)
            r.uniform_(generator=generator)
            return Sample(*self.ops.sample_host(self.state, self.scratch, self.counter, r_np, beta, normalize))
        r = torch.rand(batch_size, generator=generator, dtype=torch.float64, device=self.device)
        return Sample(*self.ops.sample(self.state, self.scratch, self.counter, r, beta, normalize))

    def _draw_buffer(self, batch_size: int):
        if len(self._draws) > 16:
            self._draws.clear()
        r_np = np.empty(batch_size, dtype=np.float64)
        self._draws[batch_size] = out = (r_np, torch.from_numpy(r_np))
        return out

    @_locked
    def find(self, mass: torch.Tensor) -> Sample:
        """The leaves at prefix masses ``mass`` (float64 [B], each in [0, total)): for each, the
        slot whose interval of the cumulative sum holds it (a zero-priority slot never;
        masses at or past the total land in the last positive slot). Weights are None."""
        m = mass.to(device=self.device, dtype=torch.float64).contiguous()
        return Sample(*self.ops.sample(self.state, self.scratch, self.counter, m, 0.0, None, True))

    def check_nonempty(self) -> None:
        if self.counter.maybe_empty():
            raise ValueError("sample: expected a buffer with rows, got an empty one; add rows first")
        if self._sums_np is not None and not self._sums_np[0] > 0:  # free on the CPU
            raise ValueError("sample: expected rows with a priority above 0, got only rows of priority 0 "
                             "(added with valid=False); nothing to sample")

    # ------------------------------------------------------------------ reading
    @property
    def leaves(self) -> torch.Tensor:
        """The leaf priorities p_i, one per slot (a view)."""
        return self.state.leaves

    def total(self) -> torch.Tensor:
        """sum_i p_i (0-dim float64 device tensor)."""
        return self.state.sums[0]

    def min(self) -> torch.Tensor:
        """min over positive leaves (inf when there is none)."""
        return self.state.mins[0]

    @_locked
    def stats(self) -> dict[str, int | float]:
        """Counters and the running maxima (reads the device: a sync)."""
        c = self.state.counters.tolist()
        m = self.state.maxes.tolist()
        return {"sanitized": c[0], "stale_dropped": c[1], "max_raw_priority": m[0], "max_priority": m[1]}

    @_locked
    def check(self) -> float:
        """Largest relative error of the stored sums against a float64 recomputation from the
        leaves (0.0 expected); math.inf if the min tree, the padding, a leaf or a maximum is
        wrong (NaN, inf, negative) or a slot past the stored rows has a priority. Reads the
        device counter (right after CUDA graph replays too)."""
        return check_state(self.state, self.counter.live())

    # ------------------------------------------------------------------ lifecycle
    @_locked
    def clear(self) -> None:
        """Forget every row and priority (the running max back to 1.0, counters to 0); every
        key handed out so far becomes stale for good."""
        st = self.state
        st.sums.zero_()
        st.mins.fill_(math.inf)
        st.maxes.fill_(1.0)
        st.counters.zero_()
        self.counter.clear()

    @_locked
    def state_dict(self) -> dict:
        """Config, leaves, maxima, counters and the key counter, as CPU tensors and ints (reads
        the device: a sync). The internal levels are rebuilt from the leaves on load."""
        st = self.state
        added, floor = self.counter.read()
        return {"capacity": st.capacity, "fanout": st.fanout, "alpha": st.alpha, "eps": st.eps,
                "added": added, "floor": floor,
                **{k: v.detach().to("cpu", copy=True) for k, v in st.tensors().items()}}

    def prepare_load(self, sd, reader: StateReader | None = None, shift: int | None = None):
        """Check a ``state_dict()`` fully and return the function that commits it (nothing
        changes before). ``shift``: the key shift decided by the owner (default: this tree's
        counter decides, see ``KeyCounter.shift_for``)."""
        r = reader or StateReader(sd, "load_state_dict")
        st = self.state
        r.same("capacity", st.capacity)
        r.same("fanout", st.fanout)
        r.same("alpha", st.alpha)
        r.same("eps", st.eps)
        added = r.int("added", 0, 2 ** 62)
        floor = r.int("floor", 0, added)
        leaves = r.tensor("leaves", (st.capacity,), torch.float64, finite=True, nonneg=True)
        maxes = r.tensor("maxes", (2,), torch.float64, finite=True)
        counters = r.tensor("counters", (2,), torch.int64, nonneg=True)
        live = min(added - floor, st.capacity)
        r.check(bool((maxes > 0).all()), "maxes", "positive running maxima", maxes.tolist())
        hi = float(st.hyper[5])
        r.check(float(leaves.max()) <= hi if leaves.numel() else True, "leaves", f"priorities <= {hi:g}",
                f"max {float(leaves.max()):g}")
        r.check(float(maxes[1]) <= hi, "maxes", f"a max priority <= {hi:g}", float(maxes[1]))
        if live < st.capacity:  # slots past the stored rows hold nothing
            first = (added - live) % st.capacity  # slot of the oldest live key
            held = torch.zeros(st.capacity, dtype=torch.bool)
            idx = (torch.arange(live) + first) % st.capacity
            held[idx] = True
            r.check(bool((leaves[~held] == 0).all()), "leaves", "priority 0 in slots holding no row",
                    "a positive priority there")
        if shift is None:
            shift = self.counter.shift_for(added, floor)

        def commit():
            st.leaves.copy_(leaves)
            st.maxes.copy_(maxes)
            st.counters.copy_(counters)
            _k.refresh.rebuild_torch(st)  # the levels follow from the leaves, exactly
            self.counter.set(added + shift, floor + shift)
        return commit

    @_locked
    def load_state_dict(self, sd) -> None:
        """Restore ``state_dict()`` output (from any device) into a tree of the same capacity,
        fanout, alpha and eps; raises ValueError and changes nothing otherwise."""
        self.prepare_load(sd)()


def check_beta(beta, device: torch.device):
    """A float in [0, 1], or a one-element float tensor on ``device`` (read by the kernels)."""
    if type(beta) is float and 0.0 <= beta <= 1.0:  # the usual case (NaN fails both compares)
        return beta
    if isinstance(beta, torch.Tensor):
        if not beta.is_floating_point() or beta.numel() != 1 or beta.device != device:
            raise TypeError(f"beta: expected a float or a one-element float tensor on {device}, got "
                            f"{beta.dtype} {tuple(beta.shape)} on {beta.device}")
        return beta.reshape(()) if beta.dtype == torch.float64 else beta.reshape(()).to(torch.float64)
    return check_float(beta, "beta", 0.0, 1.0)

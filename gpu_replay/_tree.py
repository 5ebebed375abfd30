"""The K-ary sum tree: a small state of device tensors, functions over it, a thin class on top.

Layout: levels stored contiguously in one float64 vector, root first. Level D holds the
leaves (one per slot, padded to a multiple of K with zeros); level l < D has one node per K
nodes of level l+1, also padded to a multiple of K, so the children of node j at level l
are the row j of level l+1 viewed as [-1, K]. A parallel vector holds the min over
positive leaves for the internal levels. One element after the leaves is a write sink
("trash") for the torch backend's masked scatters.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch

from . import kernels as _k

# CUDA tensors run the Triton kernels; CPU tensors the same loops compiled by numba (eager
# torch pays ~1.5 µs of dispatch per op, ~100 ops a call); anything else the torch twins.
_AUTO_BACKEND = {"cuda": ("triton", _k.HAVE_TRITON), "cpu": ("numba", _k.HAVE_NUMBA)}
BACKENDS = ("auto", "triton", "numba", "torch")


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend, available = _AUTO_BACKEND.get(device.type, ("torch", True))
        if not available:
            backend = "torch"
    if backend == "numba":
        if not _k.HAVE_NUMBA:
            raise ValueError("backend='numba': numba is not installed (pip install numba); use backend='torch'")
        if device.type != "cpu":
            raise ValueError(f"backend='numba' runs on the CPU only, got device {device}")
    if backend == "triton":
        if not _k.HAVE_TRITON:
            raise ValueError("backend='triton': triton is not installed; use backend='torch'")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(f"backend='triton' needs a CUDA device (or TRITON_INTERPRET=1), got device {device}")
    return backend


def _ops(backend: str) -> dict:
    return {"triton": _k.TRITON_OPS, "numba": _k.NUMBA_OPS, "torch": _k.TORCH_OPS}[backend]


class TreeState:
    """Tensors and shape numbers of one tree; the kernels read and write these in place."""

    def __init__(self, capacity: int, fanout: int, alpha: float, eps: float, device: torch.device):
        self.capacity = capacity
        self.fanout = fanout
        self.log2k = fanout.bit_length() - 1
        counts = [capacity]  # nodes in use per level, leaves first
        while counts[-1] > 1 or len(counts) == 1:
            counts.append(-(-counts[-1] // fanout))
        counts.reverse()
        self.depth = len(counts) - 1
        sizes = [1] + [fanout * counts[l - 1] for l in range(1, self.depth + 1)]
        self.offsets = [0]
        for s in sizes[:-1]:
            self.offsets.append(self.offsets[-1] + s)
        self.sizes = sizes
        self.leaf_offset = self.offsets[-1]
        self.trash = sizes[-1]  # index in leaves_ext
        self.offsets_t = torch.tensor(self.offsets, dtype=torch.int64, device=device)
        self.offsets_np = np.array(self.offsets, dtype=np.int64)
        self.sums = torch.zeros(self.leaf_offset + sizes[-1] + 1, dtype=torch.float64, device=device)
        self.mins = torch.full((self.leaf_offset,), math.inf, dtype=torch.float64, device=device)
        self.maxes = torch.ones(2, dtype=torch.float64, device=device)  # [max |d| + eps, max p]
        # the Triton update's scratch for the new maxima; equal to `maxes` between calls
        # (every writer of `maxes` — update_triton, clear, load — also sets it)
        self.max_next = torch.ones(2, dtype=torch.float64, device=device)
        self.counters = torch.zeros(2, dtype=torch.int64, device=device)  # [sanitized, stale dropped]
        self.alpha = float(alpha)
        self.eps = float(eps)
        self.hyper = torch.tensor([alpha, eps], dtype=torch.float64, device=device)

        self._views()

    def _views(self) -> None:
        """Per-level views, made once (the torch twins index them on every call). The
        tensors above are only ever written in place, so the views stay valid."""
        o, s, K = self.offsets, self.sizes, self.fanout
        self._levels = [self.sums[o[l]:o[l] + s[l]] for l in range(self.depth + 1)]
        self._rows = [v.view(-1, K) if l else None for l, v in enumerate(self._levels)]
        self._min_levels = [self.mins[o[l]:o[l] + s[l]] for l in range(self.depth)]
        self._min_rows = [v.view(-1, K) if l else None for l, v in enumerate(self._min_levels)]
        self.leaves = self._levels[-1]
        self.leaves_ext = self.sums[self.leaf_offset:]
        if self.sums.device.type == "cpu":  # numpy views for the numba loops (no per-call .numpy())
            self.sums_np, self.mins_np = self.sums.numpy(), self.mins.numpy()
            self.maxes_np, self.counters_np = self.maxes.numpy(), self.counters.numpy()

    def level(self, l: int) -> torch.Tensor:
        return self._levels[l]

    def level_rows(self, l: int) -> torch.Tensor:
        return self._rows[l]

    def min_level(self, l: int) -> torch.Tensor:
        return self._min_levels[l]

    def min_rows(self, l: int) -> torch.Tensor:
        return self._min_rows[l]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"sums": self.sums, "mins": self.mins, "maxes": self.maxes, "counters": self.counters}


def tree_add(state: TreeState, backend: str, added: torch.Tensor, keys: torch.Tensor, valid=None) -> None:
    """Enter ``keys`` (the next n keys: added + 0..n-1) with the max priority (0 where
    ``valid`` is False) and advance ``added``."""
    n = keys.shape[0]
    tail, tvalid = keys, valid
    if n > state.capacity:  # only the last C rows of the batch survive the ring
        tail = keys[n - state.capacity:]
        tvalid = None if valid is None else valid[n - state.capacity:]
    ops = _ops(backend)
    ops["insert"](state, tail, tvalid, state.alpha)
    ops["refresh"](state, tail)
    added.add_(n)


def tree_update(state: TreeState, backend: str, added: torch.Tensor, keys: torch.Tensor, td: torch.Tensor) -> None:
    ops = _ops(backend)
    ops["update"](state, keys, td, added, state.alpha, state.eps)
    ops["refresh"](state, keys)


def tree_sample(state: TreeState, backend: str, added: torch.Tensor, r: torch.Tensor, beta: torch.Tensor,
                norm_global: bool = True):
    return _ops(backend)["sample"](state, r, added, beta, norm_global)


def tree_check(state: TreeState, n_filled: int | None = None) -> float:
    """Largest relative difference between the stored tree and a float64 recomputation
    from its leaves (0.0 when every level is exactly the left-to-right sum of its children),
    after checking the min tree, the padding and that no leaf is negative, NaN or inf;
    returns math.inf on any such structural violation. Reads the tree back to the host."""
    leaves = state.leaves.detach().to("cpu")
    if torch.isnan(leaves).any() or (leaves < 0).any() or not torch.isfinite(leaves).all():
        return math.inf
    if (leaves[state.capacity:] != 0).any():
        return math.inf
    if n_filled is not None and (leaves[n_filled:state.capacity] != 0).any():
        return math.inf
    worst = 0.0
    child = leaves
    child_min = torch.where(leaves > 0, leaves, math.inf)
    for l in range(state.depth - 1, -1, -1):
        rows = child.view(-1, state.fanout)
        want = torch.cumsum(rows, 1)[:, -1]
        want_min = child_min.view(-1, state.fanout).amin(1)
        got = state.level(l).detach().to("cpu")[:want.shape[0]]
        got_min = state.min_level(l).detach().to("cpu")[:want.shape[0]]
        if not torch.equal(got_min, want_min):
            return math.inf
        diff = ((got - want).abs() / want.abs().clamp_min(1e-300)).max().item()
        worst = max(worst, diff)
        pad = state.level(l).detach().to("cpu")[want.shape[0]:]
        if (pad != 0).any():
            return math.inf
        child = torch.cat([want, torch.zeros(state.sizes[l] - want.shape[0], dtype=torch.float64)]) if l > 0 else want
        child_min = torch.cat([want_min, torch.full((state.sizes[l] - want.shape[0],), math.inf,
                                                     dtype=torch.float64)]) if l > 0 else want_min
    return worst


DEFAULT_FANOUT = 16  # by measurement (bench/core.py --fanout 16 32 64, see README)


class SumTree:
    """Prioritized-replay priorities in a device-resident K-ary sum tree.

    Keys: ``add(n)`` hands out the next n int64 keys (monotonic); a key's slot is
    ``key % capacity``. A key is *live* while ``added - capacity <= key < added``.

    Math (Schaul et al. 2016):

    - priority p_i = (|d_i| + eps) ** alpha; a new key enters with p = m ** alpha, m the
      running max of |d| + eps seen so far (1.0 at the start), so it is replayed soon;
    - P(i) = p_i / sum_j p_j; IS weight w_i = (N P(i)) ** -beta / max_j (N P(j)) ** -beta
      = (p_i / p_min) ** -beta with ``normalize="global"`` (p_min over live, positive
      leaves), or divided by the batch's max weight with ``normalize="batch"``;
    - ``update``: a stale key (its slot overwritten since) is dropped and counted; NaN and
      inf TD errors are replaced by the running max and counted; negative TD errors are
      ordinary (|d| is used); for a key repeated in one call, the last write wins.

    Sampling is stratified: u_i = (i + r_i) * total / B with r_i ~ U[0, 1) drawn from
    ``generator`` (the device's default generator if None). A leaf with priority 0 is never
    returned. If every stored row has priority 0 (all added with ``valid=False``) there is
    nothing to sample: on the CPU ``sample`` raises; on CUDA, where checking would wait for
    the device, it returns keys -1 with weights 0. Every call is asynchronous on CUDA: it enqueues kernels on the current stream
    and never waits for the device.

    Example::

        >>> import torch
        >>> from gpu_replay import SumTree
        >>> tree = SumTree(1000, fanout=16)
        >>> keys = tree.add(8)                       # keys 0..7, priority 1.0 each
        >>> tree.update(keys[:2], torch.tensor([3.0, -0.5]))
        >>> k, p, w = tree.sample(4, beta=0.4, generator=torch.Generator().manual_seed(0))
        >>> k.shape, float(w.max())
        (torch.Size([4]), 1.0)
    """

    def __init__(self, capacity: int, fanout: int = DEFAULT_FANOUT, alpha: float = 0.6, eps: float = 1e-6,
                 device=None, backend: str = "auto"):
        from ._storage import as_device, check_float, check_int
        capacity = check_int(capacity, "capacity", 1, 2 ** 40)
        fanout = check_int(fanout, "fanout", 2, 1024)
        if fanout & (fanout - 1):
            raise ValueError(f"fanout: expected a power of two in [2, 1024], got {fanout}")
        alpha = check_float(alpha, "alpha", 0.0, 16.0)
        eps = check_float(eps, "eps", 0.0, lo_open=True)
        self.device = as_device(device)
        self.backend = resolve_backend(backend, self.device)
        self.state = TreeState(capacity, fanout, alpha, eps, self.device)
        self.added = torch.zeros((), dtype=torch.int64, device=self.device)  # keys handed out (device)
        self.num_added = 0  # host mirror of `added` (eager calls)
        self._beta = torch.zeros(1, dtype=torch.float64, device=self.device)
        self._beta_np = self._beta.numpy() if self.device.type == "cpu" else None

    @property
    def capacity(self) -> int:
        return self.state.capacity

    @property
    def alpha(self) -> float:
        return self.state.alpha

    @property
    def eps(self) -> float:
        return self.state.eps

    def __len__(self) -> int:
        return min(self.num_added, self.capacity)

    def add(self, n: int, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Hand out the next n keys and enter them with the max priority (0 where
        ``valid`` is False: such a row is stored but never sampled). Returns keys [n]."""
        from ._storage import check_int, check_mask
        n = check_int(n, "n", 1)
        valid = check_mask(valid, n, self.device)
        keys = self.added + torch.arange(n, dtype=torch.int64, device=self.device)
        self._add(keys, valid)
        return keys

    def _add(self, keys: torch.Tensor, valid: torch.Tensor | None) -> None:
        """``add`` with the keys already made (added + 0..n-1) and the mask checked."""
        tree_add(self.state, self.backend, self.added, keys, valid)
        self.num_added += keys.shape[0]

    def update(self, keys, td_errors, strict: bool = False) -> None:
        """Set p = (|d| + eps) ** alpha for live keys (see the class docstring for the rules).
        ``strict=True`` raises ValueError on NaN/inf instead of replacing (this reads one
        flag back from the device: a sync)."""
        from ._storage import check_keys
        keys, td = check_keys(keys, td_errors, self.device)
        if strict and not bool(torch.isfinite(td).all()):
            raise ValueError("td_errors: NaN or inf in the TD errors (strict=True); nothing was updated")
        tree_update(self.state, self.backend, self.added, keys, td)

    def sample(self, batch_size: int, beta: float = 0.4, generator: torch.Generator | None = None,
               normalize: str = "global"):
        """Draw batch_size keys with P(i) = p_i / sum p. Returns (keys, priorities, weights)."""
        keys, _slots, prio, w = self._sample(batch_size, beta, generator, normalize)
        return keys, prio, w

    def _sample(self, batch_size, beta, generator, normalize):
        from ._storage import check_float, check_int
        batch_size = check_int(batch_size, "batch_size", 1, 2 ** 31 - 1)
        beta = check_float(beta, "beta", 0.0, 1.0)
        if normalize not in ("global", "batch"):
            raise ValueError(f"normalize: expected 'global' or 'batch', got {normalize!r}")
        if self.num_added == 0:
            raise ValueError("sample: the buffer is empty; add rows first")
        cpu = self.device.type == "cpu"
        if cpu and not self.state.sums_np[0] > 0:  # free on the CPU; a sync on CUDA
            raise ValueError("sample: every stored row has priority 0 (added with valid=False); nothing to sample")
        r = torch.rand(batch_size, generator=generator, dtype=torch.float64, device=self.device)
        if cpu:
            self._beta_np[0] = beta
        else:
            self._beta.fill_(beta)
        slots, keys, prio, w = tree_sample(self.state, self.backend, self.added, r, self._beta,
                                           normalize == "global")
        if w is None:
            pmin = prio.masked_fill(prio <= 0, math.inf).amin()
            pos = prio > 0
            ratio = torch.where(pos, prio / pmin, 1.0)
            w = torch.where(pos, _k.pow_pos_torch(ratio, -self._beta, _k.torch_constants(self.device)), 0.0)
            w = w.to(torch.float32)
        return keys, slots, prio, w

    @property
    def leaves(self) -> torch.Tensor:
        """The leaf priorities p_i, one per slot (a view)."""
        return self.state.leaves[:self.capacity]

    def total(self) -> torch.Tensor:
        """sum_i p_i (0-dim float64 device tensor)."""
        return self.state.sums[0]

    def min(self) -> torch.Tensor:
        """min over positive leaves (inf when there is none)."""
        return self.state.mins[0]

    def stats(self) -> dict[str, int | float]:
        """Counters and the running max (reads the device: a sync)."""
        c = self.state.counters.tolist()
        m = self.state.maxes.tolist()
        return {"sanitized": c[0], "stale_dropped": c[1], "max_raw_priority": m[0], "max_priority": m[1]}

    def check(self) -> float:
        """Largest relative error of the stored sums against a float64 recomputation from the
        leaves (0.0 expected); math.inf if the min tree, padding or a leaf is wrong."""
        return tree_check(self.state, len(self))

    def clear(self) -> None:
        """Forget every key and priority (the running max back to 1.0, counters to 0)."""
        st = self.state
        st.sums.zero_()
        st.mins.fill_(math.inf)
        st.maxes.fill_(1.0)
        st.max_next.fill_(1.0)
        st.counters.zero_()
        self.added.zero_()
        self.num_added = 0

    def state_dict(self) -> dict:
        """Everything, as CPU tensors and plain numbers (reads the device: a sync)."""
        st = self.state
        return {"capacity": st.capacity, "fanout": st.fanout, "alpha": st.alpha, "eps": st.eps,
                "num_added": self.num_added, "added": int(self.added),
                **{k: v.detach().to("cpu", copy=True) for k, v in st.tensors().items()}}

    def _prepare_load(self, sd) -> callable:
        """Check ``sd`` fully; return the function that commits it (nothing changes before)."""
        from ._checkpoint import counts, expect, tensor_like
        if not isinstance(sd, dict):
            raise ValueError(f"load_state_dict: tree: expected a dict, got {type(sd).__name__}")
        st = self.state
        for key, want in (("capacity", st.capacity), ("fanout", st.fanout), ("alpha", st.alpha), ("eps", st.eps)):
            expect(sd.get(key) == want, f"tree.{key}", want, sd.get(key))
        num_added, added = counts(sd, "tree.")
        new = {k: tensor_like(sd, k, v.shape, v.dtype) for k, v in st.tensors().items()}

        def commit():
            for k, v in st.tensors().items():
                v.copy_(new[k])
            st.max_next.copy_(st.maxes)
            self.added.fill_(added)
            self.num_added = num_added
        return commit

    def load_state_dict(self, sd) -> None:
        """Restore ``state_dict()`` output (from any device) into a tree of the same
        capacity, fanout, alpha and eps; raises ValueError and changes nothing otherwise."""
        self._prepare_load(sd)()

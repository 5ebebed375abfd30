"""Exact global prioritized replay, sharded over ``torch.distributed``.

Each rank of a process group holds one shard: a ``PrioritizedReplayBuffer`` on its own
device, filled by its own actors (``add``/``step`` are local and need no communication).
Sampling and priority updates are *collective*: every rank of the group calls them, in the
same order, with the same ``batch_size``/``dst`` (NCCL between GPUs, Gloo on CPUs; the same
code path).

How it samples (exactly as one buffer holding the union of the shards would)
------------------------------------------------------------------------------
Shard s holds priorities p_i with total T_s (its tree's root, a float64 left-to-right sum
of its children) and min m_s over its positive leaves. One gather per call brings every
rank [T_s, m_s, rows_s] (and the call's arguments, see "Bad input"). Every rank then
computes, bit for bit the same:

    S_s = T_0 + ... + T_s          (float64, left to right: the prefix of the shard totals)
    T   = S_{W-1}                  (W = world size; the union's total)
    u_i = (i + r_i) * T / B        (stratum i of B; r_i ~ U[0, 1) from a CPU generator seeded
                                    identically on every rank, so no draw is communicated)

and descends the shard level exactly as the sum tree descends one of its own levels: u is
clamped below T (to the next float down), the shard answering u_i is k = #{s : S_s <= u_i}
(capped at W - 1), and its tree's ``find`` gets the mass u_i - S_{k-1}. S_{W-1} == T, so k
is the first shard with S_k > u_i, which has T_k > 0: a draw never lands in an empty shard
(nor, inside the shard, on a zero-priority row), however u rounds. When every shard has the
same fanout K, a capacity that is a power of K, and W <= K, this *is* the descent of one
K-ary tree over the union (the shard roots are its root's children), and the batches are
bit-identical to that tree's (tested); otherwise they agree up to the rounding of different
partial sums. Either way P(i) = p_i / sum over all shards of p.

IS weights (float32) use the bit-exact power of ``kernels/_math.py`` (its numba twin on the
CPU, its torch twin elsewhere): w_i = (p_i / m) ** -beta with m = min_s m_s
(``normalize="global"``: this is (N P(i))**-beta / max_j (N P(j))**-beta over the union) or
m = the batch's min priority (``"batch"``: divided by the batch's max weight).

Who gets the rows
-----------------
- ``sample(B, beta)`` (every rank a learner, e.g. DDP): each call draws W * B strata values
  from the shared generator; rank q uses r[q*B:(q+1)*B], so every rank gets its own B rows,
  each batch an exact stratified PER sample over the union, independent of the others.
- ``sample(B, beta, dst=j)`` (one learner): B draws; rank j gets the B rows, the other
  ranks get None.

Every rank knows every draw's owner, so the row exchange needs no count exchange: each
owner finds its draws, gathers their rows, packs key, priority and every field of a row into
one uint8 row and sends them with one ``all_to_all_single`` (uneven split sizes, known to
every rank; one collective for all fields: 3-6x faster on Gloo than one per field). Rows
arrive grouped by owner, each group in draw order; as u grows with i and the owner with u,
that is draw order. One sample call = 2 collectives. (On Gloo a "gather" is one
``all_to_all_single`` of the vector repeated W times: Gloo's all_gather runs a ring of W - 1
steps.)

Keys carry their owner: ``key = local_key * W + rank`` (``owner_of``/``local_keys_of``
decode it); per rank they are monotonic, as the shard's own keys are.

Priority updates
----------------
``update_priorities(keys, td_errors)`` routes each key to its owner with one
``all_to_all_single`` of fixed-size blocks: to each owner a header [status flags, count] (so
every rank also learns whether any rank refused its input, see below) and the first L
(local key, TD error) pairs for it, L = the last sample's batch size clamped to [64, 4096]
(the same on every rank); only if some rank has more than L keys for one owner does a second
exchange carry the rest. The owner applies the pairs ordered by source rank, each source's
in the caller's order, in one local update, so every rule of
``PrioritizedReplayBuffer.update_priorities`` holds per shard: stale keys (overwritten,
cleared, never handed out, invalid rows) are dropped and counted, NaN/inf TD errors are
replaced by the running max and counted (``strict=True`` raises on the calling rank instead,
before anything is sent), and a key given more than once wins with its last write in the
order (source rank, position): the highest rank's last occurrence. A second tiny collective
(a gather of the running maxima, then their max) keeps every shard's running max equal to
the union's, so a new row enters any shard with the priority a single buffer would give it.
One update = 2 collectives (3 with overflow). Ranks with nothing to update call
``update_priorities()`` with no keys.

Bad input
---------
Every check runs on the calling rank before anything changes; the result (ok or not) rides
on the call's first collective, so when one rank's input is refused every rank raises (the
calling rank its own ``TypeError``/``ValueError``, the others a ``ValueError`` naming it)
and no rank is left waiting in a collective. ``batch_size`` and ``dst`` must agree across
ranks (checked the same way). Nothing changes on any shard, and the shared generator does
not advance, on a refused call. An exception that is not an input error (a collective that
times out, a device error) is not coordinated: a process group's ``timeout`` bounds it.

Synchronization
---------------
On CPU/Gloo every host read is free. On CUDA/NCCL a sample reads the gathered shard stats
back to the host once (the totals decide the split sizes that an uneven
``all_to_all_single`` needs on the host; the strata are drawn on the CPU), and an update
reads the W received headers once (the counts say which received pairs to apply); the
block building and everything else stay on the device. (Untested on CUDA: no GPU here.)

Checkpoints
-----------
``save(path)``/``load(path)`` are collective: each rank writes/reads its own file (``path``
may hold ``{rank}`` and ``{world_size}``, filled in per rank). A file records its rank, the
world size, the shared generator and a token common to all files of one save. ``load``
checks its file fully on every rank (a file of another rank or world size, another save,
or any mismatch a ``PrioritizedReplayBuffer.load`` refuses: ValueError), then either every
rank commits or none does.

Example (``torchrun --nproc_per_node=2 examples/distributed_per.py``)::

    import torch, torch.distributed as dist
    from gpu_replay.distributed import ShardedPrioritizedReplayBuffer

    dist.init_process_group("gloo")                      # "nccl" with device=f"cuda:{local_rank}"
    spec = {"obs": ((4,), torch.float32), "action": ((), torch.int64), "reward": ((), torch.float32)}
    rb = ShardedPrioritizedReplayBuffer(10_000, spec, seed=0)  # the same seed on every rank
    rb.add({"obs": torch.randn(64, 4), "action": torch.zeros(64, dtype=torch.int64),
            "reward": torch.ones(64)})                   # this rank's actors' rows
    batch = rb.sample(32, beta=0.4)                      # collective: 32 rows drawn over all shards
    td = torch.randn(32)                                 # the learner's TD errors
    rb.update_priorities(batch.keys, td)                 # collective: routed to the owners
"""
from __future__ import annotations

import hashlib
import os
import threading

import numpy as np
import torch
import torch.distributed as dist

from . import checkpoint as ckpt
from . import kernels as _k
from ._checks import StateReader, as_tensor, check_int, check_keys
from .buffers import Batch, PrioritizedReplayBuffer
from .kernels._math import torch_constants
from .sumtree import DEFAULT_FANOUT, check_beta

__all__ = ["ShardedPrioritizedReplayBuffer", "owner_of", "local_keys_of", "strata", "route"]

DIST_FORMAT = "gpu_replay.distributed"
DIST_VERSION = 1
_HEADER = 16  # bytes of a packed row before the fields: key (int64), priority (float64)
_INPUT_ERRORS = (TypeError, ValueError)
_PAD_MIN, _PAD_MAX = 64, 4096  # bounds of L, the (key, TD error) pairs per owner in an update's first exchange


def owner_of(keys: torch.Tensor, world_size: int) -> torch.Tensor:
    """The rank that holds each key's row (``key % world_size``)."""
    return torch.remainder(keys, world_size)


def local_keys_of(keys: torch.Tensor, world_size: int) -> torch.Tensor:
    """Each key as its owner's shard numbers it (``key // world_size``)."""
    return torch.div(keys, world_size, rounding_mode="floor")


def strata(r: np.ndarray, B: int, total: float) -> np.ndarray:
    """u = (i + r_j) * total / B for draw j = q * B + i (float64, as ``kernels/sample.py``)."""
    i = np.tile(np.arange(B, dtype=np.float64), r.shape[0] // B)
    return (i + r) * total / B


def route(u: np.ndarray, prefix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner shard, mass inside it) for prefix masses ``u`` over the shards; ``prefix`` holds
    the left-to-right cumulative sums S_s of the shard totals (float64; S_{W-1} = T > 0, the
    union's total). The top level of the union's descent, done as ``kernels/sample.py`` does
    a level: u is clamped below T (to the next float down); the owner is #{s : S_s <= u}
    capped at W - 1, i.e. the first shard with S_s > u (which has mass); the mass is
    u - S_{owner-1}. Monotone: a larger u never gets a smaller owner."""
    T = prefix[-1]
    below = np.array(T, dtype=np.float64).view(np.int64) - 1  # the next float down from T
    below = below.view(np.float64)
    u = np.where(below < u, below, u)
    n_le = np.searchsorted(prefix, u, side="right")  # #{s : S_s <= u} (prefix is non-decreasing)
    mass = u - np.concatenate([[0.0], prefix])[n_le]  # u - (the last S_s <= u, or 0)
    owner = np.minimum(n_le, prefix.shape[0] - 1)  # (u < T: a no-op, kept as the kernels keep it)
    return owner, mass


def _all_gather(vec: torch.Tensor, world_size: int, group, nccl: bool, bufs: dict | None = None) -> torch.Tensor:
    """[W, m]: every rank's 1-D ``vec`` (one collective). On Gloo an ``all_to_all_single`` of
    the vector repeated W times: Gloo's all_gather (and all_reduce) runs a ring of W - 1
    steps, its all_to_all one direct exchange (measured: 120 against 260 µs with 2
    processes, 0.7-1.3 against 1.6-4.0 ms with 4 on 2 cores). ``bufs``: reused buffers (the
    result is overwritten by the next call with the same shape: read it at once)."""
    m = vec.numel()
    key = (m, vec.dtype, vec.device)
    pair = bufs.get(key) if bufs is not None else None
    if pair is None:
        pair = (torch.empty(world_size * m, dtype=vec.dtype, device=vec.device),
                torch.empty(world_size * m, dtype=vec.dtype, device=vec.device))
        if bufs is not None:
            bufs[key] = pair
    inp, out = pair
    if nccl:
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        gather(out, vec.contiguous(), group=group)
    else:
        inp.view(world_size, m).copy_(vec.view(1, m))
        dist.all_to_all_single(out, inp, group=group)
    return out.view(world_size, m)


def _digest(obj) -> int:
    """A stable int64 fingerprint of ``repr(obj)`` (the same on every process)."""
    return int.from_bytes(hashlib.sha256(repr(obj).encode()).digest()[:8], "little", signed=True)


def _refused(where: str, statuses, rank: int, err: BaseException | None):
    """Raise on every rank when any rank refused its input: the refusing rank its own error."""
    bad = [r for r, s in enumerate(statuses) if s]
    if not bad:
        return
    if err is not None:
        raise err
    raise ValueError(f"{where}: expected valid input on every rank, got input refused on rank(s) {bad} "
                     f"(nothing changed on any shard)")


class ShardedPrioritizedReplayBuffer:
    """Prioritized replay with one shard per rank of a ``torch.distributed`` group, sampled
    exactly as one buffer holding the union (see the module docstring for the math).

    ``capacity``: rows this rank's shard holds (shards may differ). ``spec``, ``alpha``,
    ``eps``, ``normalize``, ``strict``, ``seed`` and the n-step settings must be the same on
    every rank (checked by one collective here: every rank must construct the buffer).
    ``seed`` seeds the CPU generator of the global strata, identical on every rank. ``group``:
    the process group (default: the world); ranks are the group's. ``device``: this rank's
    shard device (default: the CPU with Gloo, the current CUDA device with NCCL).
    ``backend``, ``fanout``, ``n_step``/``gamma``/``num_envs``/``autoreset_mode``: as for
    ``PrioritizedReplayBuffer`` (the shard, ``self.local``).

    Local (this rank only, no communication): ``add``, ``step``, ``flush``, ``len()``,
    ``stats()``, ``check()``. Collective (every rank, same order): ``sample``,
    ``update_priorities``, ``global_len``, ``global_stats``, ``save``, ``load``, ``clear``
    (clear is local work, but every rank must clear for the shards' running maxima to stay
    equal). Call the collective methods from one thread per rank; ``add`` from other threads
    is safe (it waits while a sample or update holds the shard).
    """

    def __init__(self, capacity: int, spec, *, group=None, device=None, seed: int = 0, alpha: float = 0.6,
                 eps: float = 1e-6, backend: str = "auto", fanout: int = DEFAULT_FANOUT,
                 normalize: str = "global", strict: bool = False, n_step: int | None = None,
                 gamma: float = 0.99, num_envs: int | None = None, autoreset_mode="next_step"):
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError("group: expected an initialized torch.distributed process group (call "
                             "torch.distributed.init_process_group first), got none")
        self.group = group if group is not None else dist.group.WORLD
        self.rank = dist.get_rank(self.group)
        self.world_size = dist.get_world_size(self.group)
        backend_name = str(dist.get_backend(self.group))  # "gloo", "nccl", or e.g. "cpu:gloo,cuda:nccl"
        has_nccl = "nccl" in backend_name
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device()) if has_nccl else torch.device("cpu")
        err = None
        cfg = None
        try:
            seed = check_int(seed, "seed", 0, 2 ** 63 - 1)
            self.local = PrioritizedReplayBuffer(capacity, spec, device=device, alpha=alpha, eps=eps,
                                                 backend=backend, fanout=fanout, normalize=normalize,
                                                 strict=strict, n_step=n_step, gamma=gamma, num_envs=num_envs,
                                                 autoreset_mode=autoreset_mode)
            if backend_name == "nccl" and self.local.device.type != "cuda":
                raise ValueError(f"device: expected a CUDA device with the NCCL backend, got {self.local.device}")
            cfg = (ckpt.spec_to_state(self.local.spec), self.local.alpha, self.local.eps, normalize, bool(strict),
                   seed, n_step, float(gamma) if n_step is not None else None,
                   autoreset_mode if n_step is not None else None)
        except _INPUT_ERRORS as e:
            err = e
        self.device = self.local.device if err is None else None
        # collectives run on the shard's CUDA device with NCCL, on the CPU otherwise (Gloo)
        nccl = has_nccl and (self.device.type == "cuda" if err is None else backend_name == "nccl")
        self.comm_device = torch.device("cpu") if not nccl else \
            self.device if err is None else torch.device("cuda", torch.cuda.current_device())
        self._nccl = nccl
        self._bufs: dict = {}
        self._pad = _PAD_MIN  # L of update_priorities' first exchange (the same on every rank)
        got = self._gather(torch.tensor([int(err is not None), 0 if cfg is None else _digest(cfg)],
                                       dtype=torch.int64, device=self.comm_device)).tolist()
        _refused("ShardedPrioritizedReplayBuffer", [g[0] for g in got], self.rank, err)
        if len({g[1] for g in got}) != 1:
            differ = [r for r, g in enumerate(got) if g[1] != got[0][1]]
            raise ValueError("ShardedPrioritizedReplayBuffer: expected the same spec, alpha, eps, normalize, strict, "
                             f"seed and n-step settings on every rank, got settings that differ from rank 0's on "
                             f"rank(s) {differ}")
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self._call_lock = threading.RLock()  # one collective call at a time on this rank
        self._const = torch_constants(self.device)
        self._layout = self._row_layout()
        # the CPU path: host-side numpy views of the rows, and the numba power when numba runs here
        self._host = self.device.type == "cpu" and all(f[5] is not None for f in self._layout)
        self._field_bytes = {name: t.reshape(self.capacity, -1).view(torch.uint8).numpy()
                             for name, t in self.local.storage.data.items()} if self._host else {}
        self._pow_nb, self._const_np = None, None
        if self._host and _k.available("numba"):
            from .kernels._jit import pow_pos_nb
            from .kernels._math import CONSTANTS_NP
            self._pow_nb, self._const_np = pow_pos_nb, CONSTANTS_NP

    # ------------------------------------------------------------------ properties
    @property
    def capacity(self) -> int:
        """This shard's capacity."""
        return self.local.capacity

    @property
    def spec(self):
        return self.local.spec

    @property
    def alpha(self) -> float:
        return self.local.alpha

    @property
    def eps(self) -> float:
        return self.local.eps

    @property
    def normalize(self) -> str:
        return self.local.normalize

    @property
    def strict(self) -> bool:
        return self.local.sampler.strict

    @property
    def tree(self):
        """This shard's ``SumTree``."""
        return self.local.tree

    def __len__(self) -> int:
        """Rows stored in this rank's shard (local; ``global_len()`` for the union)."""
        return len(self.local)

    def __repr__(self) -> str:
        return (f"ShardedPrioritizedReplayBuffer(rank={self.rank}, world_size={self.world_size}, "
                f"capacity={self.capacity}, device={self.device})")

    def owner_of(self, keys: torch.Tensor) -> torch.Tensor:
        return owner_of(keys, self.world_size)

    def local_keys_of(self, keys: torch.Tensor) -> torch.Tensor:
        return local_keys_of(keys, self.world_size)

    def _global_keys(self, local: torch.Tensor | None) -> torch.Tensor | None:
        return None if local is None else local * self.world_size + self.rank

    # ------------------------------------------------------------------ local
    def add(self, batch, valid=None) -> torch.Tensor:
        """Store this rank's rows in its shard (local: no communication); returns their
        global keys. See ``PrioritizedReplayBuffer.add``."""
        return self._global_keys(self.local.add(batch, valid))

    def step(self, obs, action, reward, next_obs, terminated, truncated, **kwargs) -> torch.Tensor | None:
        """This rank's envs through the shard's n-step windows (local); returns global keys or
        None. See ``PrioritizedReplayBuffer.step``."""
        return self._global_keys(self.local.step(obs, action, reward, next_obs, terminated, truncated, **kwargs))

    def flush(self) -> torch.Tensor | None:
        return self._global_keys(self.local.flush())

    def stats(self) -> dict:
        """This shard's counters and running maxima (``global_stats()`` for the union)."""
        return self.local.stats()

    def check(self) -> float:
        """This shard's tree against a float64 recomputation (0.0 expected)."""
        return self.local.check()

    def clear(self) -> None:
        """Empty this rank's shard. Call it on every rank (the shards' running maxima go back
        to 1.0 together). Keys handed out before are stale for good."""
        with self._call_lock:
            self.local.clear()

    # ------------------------------------------------------------------ collective reads
    def global_len(self) -> int:
        """Rows stored over all shards (collective)."""
        with self._call_lock:
            t = torch.tensor([len(self.local)], dtype=torch.int64, device=self.comm_device)
            return int(self._gather(t).sum())

    def global_stats(self) -> dict:
        """Union counters (collective): {"sanitized", "stale_dropped", "rows"} summed over the
        shards, "rows_per_rank", and the running maxima (equal on every shard)."""
        with self._call_lock:
            s = self.local.stats()
            t = torch.tensor([s["sanitized"], s["stale_dropped"], len(self.local)], dtype=torch.int64,
                             device=self.comm_device)
            got = self._gather(t).tolist()
        return {"sanitized": sum(g[0] for g in got), "stale_dropped": sum(g[1] for g in got),
                "rows": sum(g[2] for g in got), "rows_per_rank": [g[2] for g in got],
                "max_raw_priority": s["max_raw_priority"], "max_priority": s["max_priority"]}

    # ------------------------------------------------------------------ sampling
    def _gather(self, vec: torch.Tensor) -> torch.Tensor:
        """[W, m] of every rank's ``vec`` (one collective; read the result before the next call)."""
        return _all_gather(vec, self.world_size, self.group, self._nccl, self._bufs)

    def _row_layout(self) -> list[tuple]:
        """(field, offset, nbytes, dtype, shape, numpy dtype or None) of each field in a packed
        row (after the 16-byte header: key int64, priority float64)."""
        out, off = [], _HEADER
        for name, (shape, dt) in self.spec.items():
            nb = dt.itemsize * int(np.prod(shape, dtype=np.int64))
            try:
                npdt = torch.empty(0, dtype=dt).numpy().dtype
            except TypeError:  # (bfloat16 and others numpy lacks)
                npdt = None
            out.append((name, off, nb, dt, shape, npdt))
            off += nb
        self._width = off
        return out

    def sample(self, batch_size: int, beta=0.4, dst: int | None = None) -> Batch | None:
        """Collective: draw rows with P(i) = p_i / sum of p over every shard (stratified over
        the union; see the module docstring). ``dst=None``: every rank gets its own
        ``batch_size`` rows (independent batches); ``dst=j``: rank j gets them, the others
        None. Returns a ``Batch`` (global ``keys``, float32 ``weights``, float64
        ``priorities``, the fields) on this rank's device. ``beta``: as for
        ``PrioritizedReplayBuffer.sample`` (per rank; only the receiving ranks use it).
        ``batch_size`` and ``dst`` must be the same on every rank. Every shard empty:
        ValueError on every rank; every row of every shard invalid (priority 0): ValueError.
        """
        with self._call_lock:
            W, rank = self.world_size, self.rank
            err = None
            B, d = 0, -1
            try:
                B = check_int(batch_size, "batch_size", 1, 2 ** 31 - 1)
                if dst is not None:
                    d = check_int(dst, "dst", 0, W - 1)
                beta = check_beta(beta, self.device)
            except _INPUT_ERRORS as e:
                err, B, d = e, 0, -1
            with self.local._lock:  # the shard stays as gathered until its rows are gathered
                got = self._gather(self._stats(err is not None, B, d)).tolist()  # (a sync on CUDA)
                _refused("sample", [g[0] for g in got], rank, err)
                if len({(g[1], g[2]) for g in got}) != 1:
                    raise ValueError(f"sample: expected the same batch_size and dst on every rank, got "
                                     f"batch_size {[int(g[1]) for g in got]}, dst "
                                     f"{[None if g[2] < 0 else int(g[2]) for g in got]}")
                if sum(g[5] for g in got) == 0:
                    raise ValueError("sample: expected a buffer with rows, got an empty one (every shard is "
                                     "empty); add rows first")
                prefix, acc = np.empty(W, dtype=np.float64), 0.0
                for s, g in enumerate(got):  # left to right: the same doubles on every rank
                    acc += g[3]
                    prefix[s] = acc
                if not acc > 0:
                    raise ValueError("sample: expected rows with a priority above 0, got only rows of priority 0 "
                                     "(added with valid=False) on every shard; nothing to sample")
                nq = W if d < 0 else 1  # requesters: every rank, or dst alone
                self._pad = min(max(B, _PAD_MIN), _PAD_MAX)  # (B is the same on every rank)
                r = torch.rand(nq * B, generator=self.generator, dtype=torch.float64).numpy()
                owner, mass = route(strata(r, B, acc), prefix)
                q = np.repeat(np.arange(nq), B)
                counts = np.bincount(owner * nq + q, minlength=W * nq).reshape(W, nq).tolist()
                packed = self._answer(mass[owner == rank])  # ordered by requester, then draw
            if d < 0:
                send, recv = counts[rank], [counts[o][rank] for o in range(W)]
            else:
                send = [counts[rank][0] if j == d else 0 for j in range(W)]
                recv = [counts[o][0] if rank == d else 0 for o in range(W)]
            out = self._recv_rows(sum(recv))
            dist.all_to_all_single(out, packed, output_split_sizes=recv, input_split_sizes=send, group=self.group)
            if d >= 0 and rank != d:
                return None
            # The rows arrive grouped by owner, each group in draw order. u_i grows with i and the
            # owner grows with u, so that is draw order: no permutation to undo.
            return self._unpack(out, beta, min(g[4] for g in got))

    def _recv_rows(self, n: int) -> torch.Tensor:
        """The receive buffer of a sample's rows, [n, width] uint8, reused between calls."""
        buf = self._bufs.get("rows")
        if buf is None or buf.shape[0] < n:
            buf = self._bufs["rows"] = torch.empty(n, self._width, dtype=torch.uint8, device=self.comm_device)
        return buf[:n]

    def _stats(self, refused: bool, B: int, d: int) -> torch.Tensor:
        """This rank's row of the sample gather: [refused, B, dst, total, min priority, rows]."""
        tree = self.local.tree
        c = self.local.sampler.counter
        if self._host:
            live = min(int(c.np[0]) - int(c.np[1]), self.capacity)
            return torch.from_numpy(np.array([float(refused), B, d, float(tree.total()), float(tree.min()), live],
                                             dtype=np.float64))
        live = (c.t[0] - c.t[1]).clamp_max(self.capacity).to(torch.float64)
        head = torch.tensor([float(refused), float(B), float(d)], dtype=torch.float64)
        return torch.cat([head.to(self.device), torch.stack([tree.total(), tree.min(), live])]).to(self.comm_device)

    def _answer(self, mass: np.ndarray) -> torch.Tensor:
        """This shard's answers to the draws it owns, packed one uint8 row per draw: key
        (global), priority, then every field's bytes."""
        n = mass.shape[0]
        if n == 0:
            return torch.empty(0, self._width, dtype=torch.uint8, device=self.comm_device)
        s = self.local.tree.find(torch.from_numpy(mass).to(self.device))
        keys = self._global_keys(s.keys)
        if self._host:  # numpy: one copy per field straight into the packed rows
            out = np.empty((n, self._width), dtype=np.uint8)
            out[:, 0:8] = keys.numpy().view(np.uint8).reshape(n, 8)
            out[:, 8:16] = s.priorities.numpy().view(np.uint8).reshape(n, 8)
            slots = s.slots.numpy()
            for name, off, nb, _dt, _shape, _np in self._layout:
                out[:, off:off + nb] = self._field_bytes[name][slots]
            return torch.from_numpy(out)
        rows = self.local.storage.gather(s.slots)
        parts = [keys.view(torch.uint8).view(n, 8), s.priorities.view(torch.uint8).view(n, 8)]
        parts += [rows[name].reshape(n, nb // dt.itemsize).view(torch.uint8)
                  for name, _off, nb, dt, _shape, _np in self._layout]
        return torch.cat(parts, 1).to(self.comm_device)

    def _unpack(self, out: torch.Tensor, beta, norm: float) -> Batch:
        """The B received rows (in draw order) split into fields; IS weights from the priorities
        (``norm``: the union's min priority, for ``normalize="global"``)."""
        B = out.shape[0]
        if self._host:
            o = out.numpy()

            def col(off, nb, npdt, shape):  # a copy (the receive buffer is reused)
                return torch.from_numpy(o[:, off:off + nb].copy().view(npdt).reshape(B, *shape))
        else:
            def col(off, nb, dt, shape):
                c = out[:, off:off + nb].clone(memory_format=torch.contiguous_format)
                return c.to(self.device).view(dt).view(B, *shape)
        keys = col(0, 8, np.int64 if self._host else torch.int64, ())
        prio = col(8, 8, np.float64 if self._host else torch.float64, ())
        fields = {name: col(off, nb, npdt if self._host else dt, shape)
                  for name, off, nb, dt, shape, npdt in self._layout}
        return Batch(fields, keys, self._is_weights(prio, beta, norm), prio)

    def _is_weights(self, prio: torch.Tensor, beta, norm: float) -> torch.Tensor:
        """w = (p / m) ** -beta (float32, 0 where p == 0) with the bit-exact power: m = ``norm``
        (global) or the batch's min priority (batch). The numba twin on the CPU (one compiled
        call), the torch twin elsewhere: the same bits."""
        if self.normalize == "batch":
            m = torch.where(prio > 0, prio, float("inf")).amin()
        else:
            m = torch.tensor(norm, dtype=torch.float64, device=self.device)
        if self._pow_nb is not None:
            p = prio.numpy()
            pos = p > 0
            ratio = np.where(pos, p / float(m), 1.0)
            w = self._pow_nb(ratio, -float(beta), self._const_np)
            return torch.from_numpy(np.where(pos, w, 0.0).astype(np.float32))
        from .kernels.sample import weights_torch  # (loaded by the shard's backend already)
        return weights_torch(prio, m, beta, self._const)

    # ------------------------------------------------------------------ updates
    def update_priorities(self, keys=None, td_errors=None) -> None:
        """Collective: p = clamp((|d| + eps) ** alpha, ...) for each key's row, applied by the
        key's owner (every rule of ``PrioritizedReplayBuffer.update_priorities`` per shard;
        duplicates over ranks: the last write in (source rank, position) order wins). A rank
        with nothing to update calls it with no keys (``None`` or empty).

        Two collectives: one ``all_to_all_single`` of fixed-size blocks (to each owner: a
        header [flags, count] and up to L (key, TD error) pairs, L = the last sample's batch
        size, clamped to [64, 4096], the same on every rank), then the running-max gather. A
        rank that sends an owner more than L keys sets a flag in its headers, and every rank
        then takes part in a second exchange of the rest (exact split sizes, from the
        headers)."""
        with self._call_lock:
            W, rank, L = self.world_size, self.rank, self._pad
            err = None
            k = torch.empty(0, dtype=torch.int64, device=self.device)
            td = torch.empty(0, dtype=torch.float64, device=self.device)
            try:
                if not self._no_keys(keys, td_errors):
                    k, td = check_keys(keys, td_errors, self.device)
                    if self.strict and not bool(torch.isfinite(td).all()):
                        raise ValueError("td_errors: expected finite TD errors (strict=True), got NaN or inf; "
                                         "nothing was updated")
            except _INPUT_ERRORS as e:
                err = e
                k = torch.empty(0, dtype=torch.int64, device=self.device)
                td = torch.empty(0, dtype=torch.float64, device=self.device)
            flags = int(err is not None) | (4 if k.shape[0] else 0)
            blocks, rest = (self._blocks_host if self._host else self._blocks_device)(k, td, flags)
            recv = self._recv_blocks()
            dist.all_to_all_single(recv, blocks, group=self.group)
            blk = recv.view(W, L + 1, 2)
            heads = blk[:, 0].tolist()  # [flags, count for me] from each source (a sync on CUDA)
            _refused("update_priorities", [h[0] & 1 for h in heads], rank, err)
            if not any(h[0] & 4 for h in heads):
                return  # no rank sent a key: nothing changes anywhere
            counts = [h[1] for h in heads]
            parts = [blk[s, 1:1 + min(c, L)] for s, c in enumerate(counts)]
            if any(h[0] & 2 for h in heads):  # some rank sent some owner more than L keys
                over = [max(c - L, 0) for c in counts]
                out2 = torch.empty(sum(over), 2, dtype=torch.int64, device=self.comm_device)
                send = rest()
                dist.all_to_all_single(out2, send[0], output_split_sizes=over, input_split_sizes=send[1],
                                       group=self.group)
                at = 0
                for s, c in enumerate(over):  # source s: its first L pairs, then the rest, in order
                    parts[s] = torch.cat([parts[s], out2[at:at + c]])
                    at += c
            pairs = torch.cat(parts).to(self.device)
            with self.local._lock:
                if pairs.shape[0]:
                    self.local.sampler.update(pairs[:, 0].contiguous(), pairs[:, 1].contiguous().view(torch.float64))
                self._sync_maxima()

    def _recv_blocks(self) -> torch.Tensor:
        buf = self._bufs.get("blocks")
        n = self.world_size * (self._pad + 1)
        if buf is None or buf.shape[0] != n:
            buf = self._bufs["blocks"] = torch.empty(n, 2, dtype=torch.int64, device=self.comm_device)
        return buf

    def _blocks_host(self, k: torch.Tensor, td: torch.Tensor, flags: int):
        """The update's first exchange, built with numpy: [W * (L + 1), 2] int64 (per owner a
        header [flags, count] and its first L (local key, TD-error bits) pairs in the caller's
        order), and a function giving the rest (pairs past L per owner, owner-major; counts)."""
        W, L = self.world_size, self._pad
        kn = k.numpy()
        n = kn.shape[0]
        owner = np.remainder(kn, W)
        counts = np.bincount(owner, minlength=W)
        order = np.argsort(owner, kind="stable")
        so = owner[order]
        t = np.arange(n) - (np.cumsum(counts) - counts)[so]  # position among this owner's pairs
        pairs = np.empty((n, 2), dtype=np.int64)
        pairs[:, 0] = np.floor_divide(kn, W)[order]
        pairs[:, 1] = td.numpy().astype(np.float64).view(np.int64)[order]
        blocks = np.zeros((W, L + 1, 2), dtype=np.int64)
        blocks[:, 0, 0] = flags | (2 if (counts > L).any() else 0)
        blocks[:, 0, 1] = counts
        fit = t < L
        blocks[so[fit], 1 + t[fit]] = pairs[fit]
        return torch.from_numpy(blocks.reshape(-1, 2)), \
            lambda: (torch.from_numpy(pairs[~fit]), np.maximum(counts - L, 0).tolist())

    def _blocks_device(self, k: torch.Tensor, td: torch.Tensor, flags: int):
        """``_blocks_host`` with torch ops on the shard's device (no host sync: pairs past L
        are parked in a row that is not sent)."""
        W, L, dev = self.world_size, self._pad, self.device
        n = k.shape[0]
        owner = torch.remainder(k, W)
        counts = torch.bincount(owner, minlength=W)
        order = torch.sort(owner, stable=True).indices
        so = owner.index_select(0, order)
        t = torch.arange(n, device=dev) - (torch.cumsum(counts, 0) - counts).index_select(0, so)
        pairs = torch.stack([torch.div(k, W, rounding_mode="floor"), td.to(torch.float64).view(torch.int64)], 1)
        pairs = pairs.index_select(0, order)
        blocks = torch.zeros(W, L + 2, 2, dtype=torch.int64, device=dev)
        blocks[:, 0, 0] = (counts > L).any().to(torch.int64) * 2 + flags
        blocks[:, 0, 1] = counts
        fit = t < L
        blocks.index_put_((so, torch.where(fit, 1 + t, L + 1)), pairs)
        send = blocks[:, :L + 1].reshape(-1, 2).to(self.comm_device)

        def rest():
            return pairs[~fit].to(self.comm_device), (counts - L).clamp_min(0).tolist()
        return send, rest

    @staticmethod
    def _no_keys(keys, td_errors) -> bool:
        """No keys from this rank: both None, or both empty."""
        if keys is None and td_errors is None:
            return True
        if keys is None or td_errors is None:
            raise ValueError(f"keys, td_errors: expected both or neither, got "
                             f"{'keys' if keys is not None else 'td_errors'} alone")
        k = as_tensor(keys, "keys", lists=True)
        t = as_tensor(td_errors, "td_errors", lists=True)
        if tuple(k.shape) == (0,):
            if k.dtype != torch.int64 and not isinstance(keys, (list, tuple)):
                raise TypeError(f"keys: expected dtype torch.int64 (the keys sample() returned), got {k.dtype}")
            if t.numel() != 0 or tuple(t.shape) not in ((0,), (0, 1)):
                raise ValueError(f"td_errors: expected shape [0] (one per key), got {tuple(t.shape)}")
            return True
        return False

    def _sync_maxima(self) -> None:
        """Every shard's running maxima := the union's (one gather, then the max; p is monotone
        in the raw value, so both entries stay a consistent pair)."""
        maxes = self.local.tree.state.maxes
        maxes.copy_(self._gather(maxes.to(self.comm_device)).amax(0))

    # ------------------------------------------------------------------ checkpoints
    def _path(self, path) -> str:
        path = os.fspath(path)
        return path.format(rank=self.rank, world_size=self.world_size) if "{" in path else path

    def save(self, path) -> None:
        """Collective: each rank writes its shard to ``path`` (``{rank}``/``{world_size}``
        filled in), atomically (see ``PrioritizedReplayBuffer.save``), with its rank, the
        world size, the shared generator and a token common to this save's files. Raises on
        every rank if any rank's write failed."""
        with self._call_lock:
            W = self.world_size
            salt = torch.tensor([int.from_bytes(os.urandom(7), "little")], dtype=torch.int64, device=self.comm_device)
            token = _digest(self._gather(salt).tolist())
            err = None
            with self.local._lock:
                try:
                    ckpt.save_atomic({"format": DIST_FORMAT, "version": DIST_VERSION, "rank": self.rank,
                                      "world_size": W, "token": token, "generator": self.generator.get_state(),
                                      "buffer": self.local.state_dict()}, self._path(path))
                except (OSError, TypeError, ValueError) as e:
                    err = e
            flag = torch.tensor([int(err is not None)], dtype=torch.int64, device=self.comm_device)
            ok = self._gather(flag).flatten().tolist()
            if err is not None:
                raise err
            if any(ok):
                raise ValueError(f"save: expected every rank to write its file, got a failure on rank(s) "
                                 f"{[r for r, s in enumerate(ok) if s]}")

    def load(self, path) -> None:
        """Collective: each rank reads its file (``path`` as for ``save``) and checks it
        fully; then every rank restores its shard and the shared generator, or, if any rank
        refused its file (another rank's, another world size's, another save's, corrupt, or
        any mismatch ``PrioritizedReplayBuffer.load`` refuses), every rank raises ValueError
        and nothing changes anywhere."""
        with self._call_lock, self.local._lock:
            W = self.world_size
            err, commit, gen, token = None, None, None, 0
            try:
                sd = ckpt.load_checked(self._path(path))
                r = StateReader(sd, "load")
                r.check(r.sd.get("format") == DIST_FORMAT, "format", repr(DIST_FORMAT), repr(r.sd.get("format")))
                r.same("version", DIST_VERSION)
                r.check(r.get("world_size") == W, "world_size", f"{W} (this group's)",
                        f"{r.get('world_size')!r} (a file from another world size)")
                r.check(r.get("rank") == self.rank, "rank", f"{self.rank} (this rank's file)",
                        f"{r.get('rank')!r} (another rank's file)")
                token = r.get("token")
                r.check(isinstance(token, int) and not isinstance(token, bool) and -2 ** 63 <= token < 2 ** 63,
                        "token", "an int64", repr(token))
                gen = r.get("generator")
                try:
                    torch.Generator().set_state(gen)
                except Exception as e:  # noqa: BLE001
                    raise ValueError(f"load.generator: expected a CPU generator state, got one that does not load "
                                     f"({type(e).__name__})") from e
                commit = self.local._prepare_load_state_dict(r.get("buffer"))
            except _INPUT_ERRORS as e:
                err = e
            got = self._gather(torch.tensor([int(err is not None), token if err is None else 0], dtype=torch.int64,
                                           device=self.comm_device)).tolist()
            _refused("load", [g[0] for g in got], self.rank, err)
            if len({g[1] for g in got}) != 1:
                raise ValueError(f"load: expected the files of one save on every rank (one token), got tokens "
                                 f"{[g[1] for g in got]} (files from different saves); nothing changed")
            commit()
            self.generator.set_state(gen)


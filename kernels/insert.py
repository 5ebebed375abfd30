"""Hand out the next n keys and enter their rows: every new row gets the running max priority.

With A the keys handed out so far (``counter[0]``) and C the capacity, the call takes keys
A .. A+n-1 and, for the last min(n, C) of them (a ring keeps only those):

    leaf[k % C] = max p             if valid[k - A] (or no mask given)
                = 0                 otherwise (a row kept only for shape: never sampled)

then recomputes their ancestors (``refresh``) and advances A by n. max p = (max |d| + eps)
** alpha is the running max kept by ``update`` (1.0 at the start): alpha is applied once, to
the raw value, never to a priority again. Returns the keys, an int64 tensor on the device.
"""
from __future__ import annotations

import torch

from ._jit import launched, numba, tl, triton
from ._math import launch_config
from .refresh import SINGLE_MAX, refresh_torch


def insert_torch(st, sc, counter, n: int, valid: torch.Tensor | None) -> torch.Tensor:
    """Torch twin of ``insert_triton``."""
    C = st.capacity
    keys = counter.t[0] + torch.arange(n, dtype=torch.int64, device=st.sums.device)
    m = min(n, C)
    slots = torch.remainder(keys[n - m:], C)
    p = st.maxes[1:].expand(m)
    if valid is not None:
        p = torch.where(valid[n - m:], p, 0.0)
    sc.leaves.index_copy_(0, slots, p.contiguous())
    refresh_torch(st, sc, slots)
    counter.t[:1].add_(n)
    return keys


if triton is not None:
    from .refresh import refresh_levels_tl

    @triton.jit
    def _insert_kernel(sums_ptr, mins_ptr, offs_ptr, cnt_ptr, valid_ptr, maxes_ptr, keys_out, slots_out,
                       n, m, C, log2k, K: tl.constexpr, DEPTH: tl.constexpr, HAS_VALID: tl.constexpr,
                       SINGLE: tl.constexpr, BLOCK: tl.constexpr):
        """Keys and leaves of the new rows; with SINGLE (one program) also every level and
        the counter, so the whole insert is one launch."""
        A = tl.load(cnt_ptr)
        leaf_off = tl.load(offs_ptr + DEPTH)
        pmax = tl.load(maxes_ptr + 1)
        if SINGLE:  # every block of rows in turn (a while loop: see refresh_levels_tl)
            start = n * 0
            end = n
        else:
            start = tl.program_id(0).to(tl.int64) * BLOCK
            end = start + 1
        while start < end:
            i = start + tl.arange(0, BLOCK).to(tl.int64)
            mask = i < n
            key = A + i
            tl.store(keys_out + i, key, mask=mask)
            tail = mask & (i >= n - m)
            slot = key % C
            p = pmax + tl.zeros([BLOCK], dtype=tl.float64)
            if HAS_VALID:
                p = tl.where(tl.load(valid_ptr + i, mask=mask, other=0) != 0, p, 0.0)
            tl.store(sums_ptr + leaf_off + slot, p, mask=tail)
            tl.store(slots_out + (i - (n - m)), slot, mask=tail)
            start += BLOCK
        if SINGLE:
            refresh_levels_tl(sums_ptr, mins_ptr, offs_ptr, slots_out, m, log2k, K, DEPTH, BLOCK)
            tl.debug_barrier()
            tl.store(cnt_ptr, A + n)

    _insert_kernel = launched(_insert_kernel)


def insert_triton(st, sc, counter, n: int, valid: torch.Tensor | None) -> torch.Tensor:
    """One launch for the usual batches (keys, leaves, every level, the counter); above
    ``SINGLE_MAX`` rows: leaves, one launch per level, then the counter."""
    from .refresh import refresh_triton
    C = st.capacity
    m = min(n, C)
    dev = st.sums.device
    keys = torch.empty(n, dtype=torch.int64, device=dev)
    slots = torch.empty(m, dtype=torch.int64, device=dev)
    v = keys if valid is None else valid.view(torch.uint8)
    single = n <= SINGLE_MAX
    block, warps, grid = launch_config(n, 256)
    _insert_kernel[(1,) if single else grid](
        st.sums, st.mins, st.offsets_t, counter.t, v, st.maxes, keys, slots, n, m, C, st.log2k,
        K=st.fanout, DEPTH=st.depth, HAS_VALID=valid is not None, SINGLE=single, BLOCK=block,
        num_warps=warps, enable_fp_fusion=False)
    if not single:
        refresh_triton(st, sc, slots)
        counter.t[:1].add_(n)
    return keys


if numba is not None:
    import numpy as np

    from .refresh import refresh_range_nb


def insert_numba(st, sc, counter, n: int, valid: torch.Tensor | None) -> torch.Tensor:
    """Compiled CPU twin: one compiled call for the leaves, the levels and the counter."""
    A = int(counter.np[0])
    _insert_nb(sc.sums, sc.mins, sc.offs, sc.maxes, counter.np, n,
               sc.no_mask if valid is None else valid.numpy(), valid is not None, *sc.layout)
    return torch.from_numpy(np.arange(A, A + n, dtype=np.int64))


if numba is not None:

    @numba.njit(cache=True, nogil=True)
    def _insert_nb(sums, mins, offs, maxes, cnt, n, valid, has_valid, C, K, D, log2k):
        A = cnt[0]
        m = min(n, C)
        leaf = offs[D]
        pmax = maxes[1]
        first = (A + n - m) % C  # the ring positions of the surviving rows: one or two runs
        for i in range(n - m, n):
            p = pmax if (not has_valid or valid[i]) else 0.0
            sums[leaf + (A + i) % C] = p
        end = first + m
        if end <= C:
            refresh_range_nb(sums, mins, offs, first, end, K, D, log2k)
        else:
            refresh_range_nb(sums, mins, offs, first, C, K, D, log2k)
            refresh_range_nb(sums, mins, offs, 0, end - C, K, D, log2k)
        cnt[0] = A + n

"""Priority update from raw TD errors: the leaf write, with every PER rule applied on device.

For item i with key k_i and TD error d_i (A = keys ever added, C = capacity):

    stale_i  = k_i < A - C  or  k_i >= A  or  k_i < 0      (row overwritten / never written)
    raw_i    = |d_i| + eps;  if raw_i is NaN or inf: raw_i = running max (before this call)
    p_i      = raw_i ** alpha                                (``pow_pos``, exact on every device)
    leaf[k_i % C] = p_i   unless stale_i, or a later item j > i has k_j == k_i
                          (the last write of a duplicate key wins)

Counters (int64, device): [0] += #replaced NaN/inf among non-stale items, [1] += #stale.
Running maxima ``maxes`` = [max raw, max p] over the good (finite), non-stale items: the
kernel folds them into ``max_next`` with an integer atomic max on the float64 bits (for
positive floats the bit patterns order like the values, so it is exact and
order-independent), and the launcher copies ``max_next`` into ``maxes`` afterwards, so
every item of one call sees the same pre-call max. New rows enter with max p (``insert``),
so alpha is applied once, to the raw value. Negative TD errors are ordinary (|d| is used).

Parents are not touched here: ``levels.refresh_*`` recomputes them afterwards.
"""
from __future__ import annotations

import torch

from ._math import (cpu_constants_np, launch_config, math_constants, numba, pow_pos, pow_pos_nb, pow_pos_torch,
                    torch_constants, triton, tl)


def _later_duplicate(keys: torch.Tensor) -> torch.Tensor:
    """later[i] = some j > i has keys[j] == keys[i] (stable sort, no host sync)."""
    sk, perm = torch.sort(keys, stable=True)
    not_last = torch.ones_like(keys, dtype=torch.bool)
    not_last[:-1] = sk[1:] == sk[:-1]
    not_last[-1] = False
    return torch.empty_like(not_last).scatter_(0, perm, not_last)


def update_torch(tree, keys: torch.Tensor, td: torch.Tensor, added: torch.Tensor,
                 alpha: float, eps: float) -> None:
    """Torch twin of ``update_triton``: writes leaves, counters and the running maxima."""
    stale = (keys < (added - tree.capacity).clamp_min(0)) | (keys >= added)
    raw = td.to(torch.float64).abs() + eps
    bad = ~torch.isfinite(raw)
    raw = torch.where(bad, tree.maxes[0], raw)
    p = pow_pos_torch(raw, alpha, torch_constants(keys.device))
    write = ~(stale | _later_duplicate(keys))
    tree.leaves_ext.index_copy_(0, torch.where(write, torch.remainder(keys, tree.capacity), tree.trash), p)
    tree.counters.add_(torch.stack((bad & ~stale, stale)).sum(1))
    good = ~(stale | bad)
    torch.maximum(tree.maxes, torch.where(good, torch.stack((raw, p)), 0.0).amax(1), out=tree.maxes)


if triton is not None:

    @triton.jit
    def _update_kernel(sums_ptr, keys_ptr, td_ptr, added_ptr, maxes_ptr, maxnext_ptr, cnt_ptr,
                       hyper_ptr, cst_ptr, later_ptr, leaf_off, B, C,
                       HAS_LATER: tl.constexpr, BLOCK: tl.constexpr, JBLOCK: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)
        i = pid * BLOCK + tl.arange(0, BLOCK)
        mask = i < B
        key = tl.load(keys_ptr + i, mask=mask, other=0)
        A = tl.load(added_ptr)
        stale = (key < tl.maximum(A - C, 0)) | (key >= A)
        alpha = tl.load(hyper_ptr)
        eps = tl.load(hyper_ptr + 1)
        raw = tl.abs(tl.load(td_ptr + i, mask=mask, other=0.0).to(tl.float64)) + eps
        bad = (raw != raw) | (raw == float("inf"))
        raw = tl.where(bad, tl.load(maxes_ptr), raw)
        if HAS_LATER:  # large batches: the launcher found the duplicates with a sort
            later = tl.load(later_ptr + i, mask=mask, other=0).to(tl.int32)
        else:  # small batches: compare with every later key (B*B/2 compares, no extra launch)
            later = tl.zeros([BLOCK], dtype=tl.int32)
            for start in range(0, B, JBLOCK):
                j = start + tl.arange(0, JBLOCK).to(tl.int64)
                mj = j < B
                kj = tl.load(keys_ptr + j, mask=mj, other=0)
                eq = (kj[None, :] == key[:, None]) & (j[None, :] > i[:, None]) & mj[None, :]
                later = tl.maximum(later, tl.max(eq.to(tl.int32), axis=1))
        write = mask & (~stale) & (later == 0)
        p = pow_pos(raw, alpha, cst_ptr)
        slot = tl.where(stale, 0, key % C)
        tl.store(sums_ptr + leaf_off + slot, p, mask=write)
        applied = mask & (~stale)
        tl.atomic_add(cnt_ptr, tl.sum((applied & bad).to(tl.int64)))
        tl.atomic_add(cnt_ptr + 1, tl.sum((mask & stale).to(tl.int64)))
        good = applied & (~bad)
        tl.atomic_max(maxnext_ptr, tl.max(tl.where(good, raw, 0.0).to(tl.int64, bitcast=True)))
        tl.atomic_max(maxnext_ptr + 1, tl.max(tl.where(good, p, 0.0).to(tl.int64, bitcast=True)))


SORT_DEDUP_MIN = 2048


def update_triton(tree, keys: torch.Tensor, td: torch.Tensor, added: torch.Tensor,
                  alpha: float, eps: float) -> None:
    """One launch for the leaves (plus a copy of the running max). Contract as ``update_torch``."""
    B = keys.shape[0]
    block, warps, grid = launch_config(B, 128)
    # above SORT_DEDUP_MIN keys the in-kernel all-pairs scan (B*B/2 compares) would dominate:
    # find the duplicates with one device sort instead (the twin's way; same result)
    later = _later_duplicate(keys).view(torch.uint8) if B >= SORT_DEDUP_MIN else keys
    # tree.max_next == tree.maxes here (TreeState keeps them equal between calls)
    _update_kernel[grid](tree.sums, keys, td, added, tree.maxes, tree.max_next.view(torch.int64),
                         tree.counters, tree.hyper, math_constants(keys.device), later,
                         tree.leaf_offset, B, tree.capacity, HAS_LATER=B >= SORT_DEDUP_MIN,
                         BLOCK=block, JBLOCK=32, num_warps=warps, enable_fp_fusion=False)
    tree.maxes.copy_(tree.max_next)


if numba is not None:
    import numpy as np

    @numba.njit(cache=True, nogil=True)
    def _update_nb(sums, leaf_off, keys, td, added, maxes, counters, alpha, eps, cst, C):
        B = keys.shape[0]
        lo = max(added - C, 0)
        raw = np.empty(B, np.float64)
        stale = np.empty(B, np.bool_)
        bad = np.empty(B, np.bool_)
        for i in range(B):
            stale[i] = keys[i] < lo or keys[i] >= added
            x = abs(np.float64(td[i])) + eps
            bad[i] = not np.isfinite(x)
            raw[i] = maxes[0] if bad[i] else x
        p = pow_pos_nb(raw, alpha, cst)
        m_raw = maxes[0]
        m_p = maxes[1]
        for i in range(B):  # in batch order: the last write of a duplicate key wins
            if stale[i]:
                counters[1] += 1
                continue
            sums[leaf_off + keys[i] % C] = p[i]
            if bad[i]:
                counters[0] += 1
            else:
                m_raw = max(m_raw, raw[i])
                m_p = max(m_p, p[i])
        maxes[0] = m_raw
        maxes[1] = m_p


def update_numba(tree, keys: torch.Tensor, td: torch.Tensor, added: torch.Tensor,
                 alpha: float, eps: float) -> None:
    """Compiled CPU twin: items in batch order, so the last write of a duplicate wins."""
    if td.dtype not in (torch.float32, torch.float64):  # float16/bfloat16: numba has no such type
        td = td.to(torch.float64)  # exact, and what the twin does first
    _update_nb(tree.sums_np, tree.leaf_offset, keys.numpy(), td.detach().numpy(), int(added),
               tree.maxes_np, tree.counters_np, alpha, eps, cpu_constants_np(), tree.capacity)

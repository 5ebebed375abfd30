"""Priority update from raw TD errors: the leaf write, with every PER rule applied on device.

For item i with key k_i and TD error d_i (A = keys ever added, C = capacity):

    stale_i  = k_i < A - C  or  k_i >= A  or  k_i < 0      (row overwritten / never written)
    raw_i    = |d_i| + eps;  if raw_i is NaN or inf: raw_i = running max (before this call)
    p_i      = raw_i ** alpha                                (``pow_pos``, exact on every device)
    leaf[k_i % C] = p_i   unless stale_i, or a later item j > i has k_j == k_i
                          (the last write of a duplicate key wins)

Counters (int64, device): [0] += #replaced NaN/inf among non-stale items, [1] += #stale.
Running max: ``max_next`` (the int64 view of a positive float64; for positive floats the
bit patterns order like the values, so an integer atomic max is exact) takes the max of
the good, non-stale raw values; the caller copies it into ``max_raw`` afterwards, so every
item of one call sees the same pre-call max. Negative TD errors are ordinary (|d| is used).

Parents are not touched here: ``levels.refresh_*`` recomputes them afterwards.
"""
from __future__ import annotations

import torch

from ._math import launch_config, math_constants, pow_pos, pow_pos_torch, triton, tl


def _later_duplicate(keys: torch.Tensor) -> torch.Tensor:
    """later[i] = some j > i has keys[j] == keys[i] (stable sort, no host sync)."""
    sk, perm = torch.sort(keys, stable=True)
    not_last = torch.ones_like(keys, dtype=torch.bool)
    not_last[:-1] = sk[1:] == sk[:-1]
    not_last[-1] = False
    return torch.empty_like(not_last).scatter_(0, perm, not_last)


def update_torch(tree, keys: torch.Tensor, td: torch.Tensor, added: torch.Tensor,
                 alpha: float, eps: float) -> None:
    """Torch twin of ``update_triton``: writes leaves, counters and the running max."""
    C = tree.capacity
    stale = (keys < added - C) | (keys >= added) | (keys < 0)
    raw = td.to(torch.float64).abs() + eps
    bad = ~torch.isfinite(raw)
    raw = torch.where(bad, tree.max_raw, raw)
    write = ~(stale | _later_duplicate(keys))
    p = pow_pos_torch(raw, alpha, math_constants(keys.device))
    idx = torch.where(write, torch.remainder(keys, C), tree.trash)
    tree.leaves_ext.index_copy_(0, idx, p)
    applied = ~stale
    tree.counters.add_(torch.stack(((applied & bad).sum(), stale.sum())))
    good = torch.where(applied & ~bad, raw, 0.0)
    torch.maximum(tree.max_raw, good.amax().unsqueeze(0), out=tree.max_raw)


if triton is not None:

    @triton.jit
    def _update_kernel(sums_ptr, keys_ptr, td_ptr, added_ptr, maxraw_ptr, maxnext_ptr, cnt_ptr,
                       hyper_ptr, cst_ptr, leaf_off, B, C,
                       BLOCK: tl.constexpr, JBLOCK: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)
        i = pid * BLOCK + tl.arange(0, BLOCK)
        mask = i < B
        key = tl.load(keys_ptr + i, mask=mask, other=0)
        A = tl.load(added_ptr)
        stale = (key < A - C) | (key >= A) | (key < 0)
        alpha = tl.load(hyper_ptr)
        eps = tl.load(hyper_ptr + 1)
        raw = tl.abs(tl.load(td_ptr + i, mask=mask, other=0.0).to(tl.float64)) + eps
        bad = (raw != raw) | (raw == float("inf"))
        raw = tl.where(bad, tl.load(maxraw_ptr), raw)
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
        good = tl.where(applied & (~bad), raw, 0.0)
        tl.atomic_max(maxnext_ptr, tl.max(good.to(tl.int64, bitcast=True)))


def update_triton(tree, keys: torch.Tensor, td: torch.Tensor, added: torch.Tensor,
                  alpha: float, eps: float) -> None:
    """One launch for the leaves (plus a copy of the running max). Contract as ``update_torch``."""
    B = keys.shape[0]
    block, warps, grid = launch_config(B, 128)
    tree.max_next.copy_(tree.max_raw)
    _update_kernel[grid](tree.sums, keys, td, added, tree.max_raw, tree.max_next.view(torch.int64),
                         tree.counters, tree.hyper, math_constants(keys.device),
                         tree.leaf_offset, B, tree.capacity,
                         BLOCK=block, JBLOCK=128, num_warps=warps, enable_fp_fusion=False)
    tree.max_raw.copy_(tree.max_next)

"""Leaves for newly added rows: every new row enters with the running max priority.

    leaf[k % C] = max p             if valid[k] (or no mask given)
                = 0                 otherwise (a row kept only for shape: never sampled)

max p = (max |d| + eps) ** alpha, the running max kept by ``update`` (1.0 at the start):
alpha is applied once, to the raw value, never to a priority again.
The keys of one call are distinct (the caller passes at most C of them). Parents are
recomputed afterwards by ``levels``.
"""
from __future__ import annotations

import torch

from ._math import launch_config, numba, triton, tl


def insert_torch(tree, keys: torch.Tensor, valid: torch.Tensor | None, alpha: float) -> None:
    """Torch twin of ``insert_triton``."""
    p = tree.maxes[1:].expand(keys.shape[0])
    if valid is not None:
        p = torch.where(valid, p, 0.0)
    tree.leaves.index_copy_(0, torch.remainder(keys, tree.capacity), p.contiguous())


if triton is not None:

    @triton.jit
    def _insert_kernel(sums_ptr, keys_ptr, valid_ptr, maxes_ptr, leaf_off, B, C,
                       HAS_VALID: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)
        i = pid * BLOCK + tl.arange(0, BLOCK)
        mask = i < B
        key = tl.load(keys_ptr + i, mask=mask, other=0)
        p = tl.load(maxes_ptr + 1) + tl.zeros([BLOCK], dtype=tl.float64)
        if HAS_VALID:
            p = tl.where(tl.load(valid_ptr + i, mask=mask, other=0) != 0, p, 0.0)
        tl.store(sums_ptr + leaf_off + key % C, p, mask=mask)


def insert_triton(tree, keys: torch.Tensor, valid: torch.Tensor | None, alpha: float) -> None:
    """One launch writing the new rows' leaves. Contract as ``insert_torch``."""
    B = keys.shape[0]
    block, warps, grid = launch_config(B)
    v = keys if valid is None else valid.view(torch.uint8)
    _insert_kernel[grid](tree.sums, keys, v, tree.maxes, tree.leaf_offset, B, tree.capacity, HAS_VALID=valid is not None,
                         BLOCK=block, num_warps=warps, enable_fp_fusion=False)


if numba is not None:

    @numba.njit(cache=True, nogil=True)
    def _insert_nb(sums, leaf_off, keys, valid, has_valid, p, C):
        for i in range(keys.shape[0]):
            sums[leaf_off + keys[i] % C] = p if (not has_valid or valid[i]) else 0.0


def insert_numba(tree, keys: torch.Tensor, valid: torch.Tensor | None, alpha: float) -> None:
    """Compiled CPU twin of ``insert_torch``."""
    v = keys if valid is None else valid
    _insert_nb(tree.sums_np, tree.leaf_offset, keys.numpy(), v.numpy(), valid is not None,
               tree.maxes_np[1], tree.capacity)

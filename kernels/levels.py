"""Recompute the ancestors of touched leaves, one level per launch, bottom-up.

A parent is always recomputed from its K children, never adjusted by a delta:

    sum(parent) = c_0 + c_1 + ... + c_{K-1}            (float64, left to right)
    min(parent) = min over children of their min       (a leaf's min is p if p > 0, else +inf)

so the tree cannot drift, and duplicate parents in one batch are harmless: every writer of
a parent computes the same value from the same, already final, children. No atomics.
"""
from __future__ import annotations

import torch

from ._math import launch_config, numba, seq_cumsum, triton, tl


def refresh_torch(tree, keys: torch.Tensor) -> None:
    """Torch twin of ``refresh_triton``: the whole batch moves up one level per step."""
    slots = torch.remainder(keys.clamp_min(0), tree.capacity)
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=keys.device)
    for level in range(tree.depth - 1, -1, -1):
        parents = slots >> (tree.log2k * (tree.depth - level))
        rows = tree.level_rows(level + 1).index_select(0, parents)
        tree.level(level).index_copy_(0, parents, seq_cumsum(rows)[:, -1])
        if level + 1 == tree.depth:
            mrows = torch.where(rows > 0, rows, inf)
        else:
            mrows = tree.min_rows(level + 1).index_select(0, parents)
        tree.min_level(level).index_copy_(0, parents, mrows.amin(1))


if triton is not None:

    @triton.jit
    def _refresh_kernel(sums_ptr, mins_ptr, offs_ptr, keys_ptr, B, C, shift, level,
                        K: tl.constexpr, LEAF_CHILDREN: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)
        i = pid * BLOCK + tl.arange(0, BLOCK)
        mask = i < B
        key = tl.maximum(tl.load(keys_ptr + i, mask=mask, other=0), 0)
        node = (key % C) >> shift
        base = tl.load(offs_ptr + level + 1) + node * K
        acc = tl.zeros([BLOCK], dtype=tl.float64)
        mn = tl.full([BLOCK], float("inf"), dtype=tl.float64)
        for j in tl.static_range(K):
            c = tl.load(sums_ptr + base + j, mask=mask, other=0.0)
            acc = acc + c
            if LEAF_CHILDREN:
                cm = tl.where(c > 0, c, float("inf"))
            else:
                cm = tl.load(mins_ptr + base + j, mask=mask, other=float("inf"))
            mn = tl.minimum(mn, cm)
        out = tl.load(offs_ptr + level) + node
        tl.store(sums_ptr + out, acc, mask=mask)
        tl.store(mins_ptr + out, mn, mask=mask)


def refresh_triton(tree, keys: torch.Tensor) -> None:
    """``depth`` launches, leaves' parents first. Contract as ``refresh_torch``."""
    B = keys.shape[0]
    block, warps, grid = launch_config(B, 256)
    for level in range(tree.depth - 1, -1, -1):
        _refresh_kernel[grid](tree.sums, tree.mins, tree.offsets_t, keys, B, tree.capacity,
                              tree.log2k * (tree.depth - level), level,
                              K=tree.fanout, LEAF_CHILDREN=level + 1 == tree.depth, BLOCK=block,
                              num_warps=warps, enable_fp_fusion=False)


if numba is not None:
    import numpy as np

    @numba.njit(cache=True, nogil=True)
    def _refresh_nb(sums, mins, offs, keys, C, K, D, log2k):
        B = keys.shape[0]
        for level in range(D - 1, -1, -1):  # a level is final before its parents are read
            shift = log2k * (D - level)
            last = -1
            for i in range(B):
                node = (max(keys[i], 0) % C) >> shift
                if node == last:  # consecutive keys often share a parent
                    continue
                last = node
                base = offs[level + 1] + node * K
                acc = 0.0
                mn = np.inf
                for j in range(K):
                    c = sums[base + j]
                    acc = acc + c
                    if level + 1 == D:
                        cm = c if c > 0 else np.inf
                    else:
                        cm = mins[base + j]
                    mn = min(mn, cm)
                sums[offs[level] + node] = acc
                mins[offs[level] + node] = mn


def refresh_numba(tree, keys: torch.Tensor) -> None:
    """Compiled CPU twin of ``refresh_torch``."""
    _refresh_nb(tree.sums_np, tree.mins_np, tree.offsets_np, keys.numpy(), tree.capacity,
                tree.fanout, tree.depth, tree.log2k)

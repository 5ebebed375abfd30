"""Recompute the ancestors of touched leaves, bottom-up (and the whole tree, ``rebuild``).

A parent is always recomputed from its K children, never adjusted by a delta:

    sum(parent) = c_0 + c_1 + ... + c_{K-1}            (float64, left to right)
    min(parent) = min over children of their min       (a leaf's min is p if p > 0, else +inf)

so the tree cannot drift, and duplicate parents in one batch are harmless: every writer of
a parent computes the same value from the same, already final, children. No atomics.

``refresh`` is not a public call of its own: ``insert`` and ``update`` end with it (the numba
backend inside the same compiled call, Triton in the same launch for the usual batches).
"""
from __future__ import annotations

import math

import torch

from ._jit import launched, numba, tl, triton
from ._math import launch_config, seq_cumsum


def refresh_torch(st, sc, slots: torch.Tensor) -> None:
    """Torch twin: the whole batch moves up one level per step (branch-free)."""
    for level in range(st.depth - 1, -1, -1):
        parents = slots >> (st.log2k * (st.depth - level))
        rows = sc.rows[level + 1].index_select(0, parents)
        sc.levels[level].index_copy_(0, parents, seq_cumsum(rows)[:, -1])
        if level + 1 == st.depth:
            mrows = torch.where(rows > 0, rows, math.inf)
        else:
            mrows = sc.min_rows[level + 1].index_select(0, parents)
        sc.min_levels[level].index_copy_(0, parents, mrows.amin(1))


def rebuild_torch(st) -> None:
    """Every internal level (sums and mins) recomputed from the leaves, level by level (any
    backend: used when a whole tree is replaced, e.g. by ``load``). Same sums, bit for bit,
    as the incremental ``refresh``."""
    o, s, K = st.offsets, st.sizes, st.fanout
    child = st.sums[o[-1]:o[-1] + s[-1]]
    child_min = torch.where(child > 0, child, math.inf)
    for level in range(st.depth - 1, -1, -1):
        rows = child.view(-1, K)
        n = rows.shape[0]
        lvl = st.sums[o[level]:o[level] + s[level]]
        mins = st.mins[o[level]:o[level] + s[level]]
        lvl[:n].copy_(seq_cumsum(rows)[:, -1])
        lvl[n:].zero_()
        mins[:n].copy_(child_min.view(-1, K).amin(1))
        mins[n:].fill_(math.inf)
        child, child_min = lvl, mins


# ----------------------------------------------------------------------------- Triton
if triton is not None:

    @triton.jit
    def _nodes_tl(sums_ptr, mins_ptr, offs_ptr, slots_ptr, i, mask, shift, level, K: tl.constexpr,
                  LEAF_CHILDREN: tl.constexpr, BLOCK: tl.constexpr):
        """The parents at ``level`` of the slots i (a block): sum and min from their K children."""
        node = tl.load(slots_ptr + i, mask=mask, other=0) >> shift
        base = tl.load(offs_ptr + level + 1) + node * K
        acc = tl.zeros([BLOCK], dtype=tl.float64)
        mn = tl.full([BLOCK], float("inf"), dtype=tl.float64)
        for j in range(K):  # a run-time loop: compile time does not grow with K
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

    @triton.jit
    def _refresh_kernel(sums_ptr, mins_ptr, offs_ptr, slots_ptr, B, shift, level,
                        K: tl.constexpr, LEAF_CHILDREN: tl.constexpr, BLOCK: tl.constexpr):
        """One level: the parents (at ``level``) of B slots."""
        i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        _nodes_tl(sums_ptr, mins_ptr, offs_ptr, slots_ptr, i, i < B, shift, level, K, LEAF_CHILDREN, BLOCK)

    _refresh_kernel = launched(_refresh_kernel)

    @triton.jit
    def refresh_levels_tl(sums_ptr, mins_ptr, offs_ptr, slots_ptr, B, log2k,
                          K: tl.constexpr, DEPTH: tl.constexpr, BLOCK: tl.constexpr):
        """Every level, bottom-up, in ONE program: the batch in blocks of BLOCK, a barrier
        between levels (a level is final before its parents read it). For the usual batches
        this saves a launch per level; above ``SINGLE_MAX`` keys one launch per level wins."""
        for d in tl.static_range(DEPTH):
            level = DEPTH - 1 - d
            tl.debug_barrier()
            start = B * 0  # (a while loop: triton 3.6's interpreter cannot take range() of a run-time B)
            while start < B:
                i = start + tl.arange(0, BLOCK).to(tl.int64)
                _nodes_tl(sums_ptr, mins_ptr, offs_ptr, slots_ptr, i, i < B, log2k * (DEPTH - level), level, K,
                          level + 1 == DEPTH, BLOCK)
                start += BLOCK


# above this many keys, refresh one level per launch (one program would walk them serially)
SINGLE_MAX = 2048


def refresh_triton(st, sc, slots: torch.Tensor) -> None:
    """``depth`` launches, leaves' parents first (the multi-program path of large batches)."""
    B = slots.shape[0]
    block, warps, grid = launch_config(B, 256)
    for level in range(st.depth - 1, -1, -1):
        _refresh_kernel[grid](st.sums, st.mins, st.offsets_t, slots, B, st.log2k * (st.depth - level), level,
                              K=st.fanout, LEAF_CHILDREN=level + 1 == st.depth, BLOCK=block,
                              num_warps=warps, enable_fp_fusion=False)


# ----------------------------------------------------------------------------- numba
if numba is not None:
    import numpy as np

    @numba.njit(cache=True, nogil=True, inline="always")
    def _node_nb(sums, mins, offs, level, node, K, leaf_children, do_min=True):
        """Recompute one node's sum from its K children, left to right, and (``do_min``) its
        min; True if its min changed. A node whose children's mins are all unchanged keeps
        its min (``do_min`` False): recomputing it would give the same value."""
        base = offs[level + 1] + node * K
        acc = 0.0
        if not do_min:
            for j in range(K):
                acc = acc + sums[base + j]
            sums[offs[level] + node] = acc
            return False
        mn = np.inf
        if leaf_children:
            for j in range(K):
                c = sums[base + j]
                acc = acc + c
                if c > 0 and c < mn:
                    mn = c
        else:
            for j in range(K):
                acc = acc + sums[base + j]
                m = mins[base + j]
                if m < mn:
                    mn = m
        sums[offs[level] + node] = acc
        changed = mins[offs[level] + node] != mn
        mins[offs[level] + node] = mn
        return changed

    @numba.njit(cache=True, nogil=True)
    def refresh_slots_nb(sums, mins, offs, slots, K, D, log2k):
        """The ancestors of ``slots`` (sorted), level-major: a level is final before its
        parents are read, and a parent shared by consecutive slots is done once. Sums are
        recomputed all the way up; a min only where a child's min changed (most updates move
        no min above the leaves' parents: ~40 % of the work saved)."""
        B = slots.shape[0]
        if B == 0:
            return
        chg = np.ones(B, np.bool_)  # chg[i]: the node of item i (the first of its group) changed min
        for level in range(D - 1, -1, -1):
            shift = log2k * (D - level)
            leafp = level + 1 == D
            first = 0
            need = chg[0]
            node = slots[0] >> shift
            for i in range(1, B + 1):
                nxt = slots[i] >> shift if i < B else -1
                if nxt == node:
                    need = need or chg[i]
                    chg[i] = False
                    continue
                chg[first] = _node_nb(sums, mins, offs, level, node, K, leafp, leafp or need)
                if i < B:
                    first = i
                    need = chg[i]
                    node = nxt

    @numba.njit(cache=True, nogil=True)
    def refresh_range_nb(sums, mins, offs, lo, hi, K, D, log2k):
        """The parents of the slots lo..hi-1 (a contiguous run, as ``insert`` writes)."""
        for level in range(D - 1, -1, -1):
            shift = log2k * (D - level)
            for node in range(lo >> shift, ((hi - 1) >> shift) + 1):
                _node_nb(sums, mins, offs, level, node, K, level + 1 == D)


def refresh_numba(st, sc, slots: torch.Tensor) -> None:
    """Compiled CPU twin of ``refresh_torch`` (the backends' own ops call the loops directly)."""
    refresh_slots_nb(sc.sums, sc.mins, sc.offs, slots.numpy(), st.fanout, st.depth, st.log2k)

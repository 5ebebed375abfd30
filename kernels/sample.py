"""Stratified batched sampling: one descent of the K-ary sum tree for the whole batch.

For query i of B, with r_i ~ U[0, 1) from the caller's generator and T the root sum:

    u_i = (i + r_i) * T / B                     (stratum i of B)

At each level u is first clamped below the current node's stored total T_n (to the next
float down), the K children c_0..c_{K-1} are prefix-summed left to right,
S_j = c_0 + ... + c_j, and the query steps into child k = #{j : S_j <= u}, then subtracts
S_{k-1}. Every parent is stored as exactly that left-to-right sum (``levels``), so
S_{K-1} == T_n, hence u < S_{K-1} and the chosen child is the first with S_k > u, which has
positive mass: a leaf whose priority is zero (unfilled, invalid, padding) is never
returned, however u rounds (rounding that pushes u past T_n is absorbed by the clamp).

Outputs per query: the slot, its key (the newest key written to that slot), its leaf
priority p, and, with ``norm_global``, the IS weight w = (p / p_min) ** -beta, which is
(N P(i))**-beta / max_j (N P(j))**-beta with the N and the total cancelled.
"""
from __future__ import annotations

import torch

from ._math import (cpu_constants_np, launch_config, math_constants, numba, pow_pos, pow_pos_nb, pow_pos_torch,
                    seq_cumsum, torch_constants, triton, tl)


def keys_from_slots(slots: torch.Tensor, added: torch.Tensor, capacity: int) -> torch.Tensor:
    """The newest key k < added with k % capacity == slot (-1 for a slot never written)."""
    a1 = added - 1
    return torch.where(slots <= a1, a1 - torch.remainder(a1 - slots, capacity), -1)


def sample_torch(tree, r: torch.Tensor, added: torch.Tensor, beta: torch.Tensor, norm_global: bool = True):
    """Torch twin of ``sample_triton``: returns (slots, keys, priorities, weights or None).
    The whole batch moves down one level per step (branch-free)."""
    B = r.shape[0]
    K = tree.fanout
    u = (torch.arange(B, device=r.device, dtype=torch.float64) + r) * tree.sums[0] / B
    node = torch.zeros(B, dtype=torch.int64, device=r.device)
    for level in range(tree.depth):
        below = (tree.level(level).index_select(0, node).view(torch.int64) - 1).view(torch.float64)
        u = torch.where(below < u, below, u)
        csum = seq_cumsum(tree.level_rows(level + 1).index_select(0, node))  # [B, K]
        le = csum <= u.unsqueeze(1)
        u = u - torch.where(le, csum, 0.0).amax(1)
        node = node * K + le.sum(1).clamp_max(K - 1)
    slots = node.clamp_max(tree.capacity - 1)
    prio = tree.leaves.index_select(0, slots)
    keys = keys_from_slots(slots, added, tree.capacity)
    weights = None
    if norm_global:
        pos = prio > 0
        w = pow_pos_torch(torch.where(pos, prio / tree.mins[0], 1.0), -beta, torch_constants(r.device))
        weights = torch.where(pos, w, 0.0).to(torch.float32)
    return slots, keys, prio, weights


if triton is not None:

    @triton.jit
    def _sample_kernel(sums_ptr, mins_ptr, offs_ptr, r_ptr, added_ptr, beta_ptr, cst_ptr,
                       slot_out, key_out, prio_out, w_out, B, C,
                       K: tl.constexpr, DEPTH: tl.constexpr, NORM_GLOBAL: tl.constexpr,
                       BLOCK: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)
        i = pid * BLOCK + tl.arange(0, BLOCK)
        mask = i < B
        r = tl.load(r_ptr + i, mask=mask, other=0.0)
        u = (i.to(tl.float64) + r) * tl.load(sums_ptr) / B
        node = tl.zeros([BLOCK], dtype=tl.int64)
        for level in tl.static_range(DEPTH):
            tot = tl.load(sums_ptr + tl.load(offs_ptr + level) + node, mask=mask, other=0.0)
            below = (tot.to(tl.int64, bitcast=True) - 1).to(tl.float64, bitcast=True)
            u = tl.where(below < u, below, u)
            base = tl.load(offs_ptr + level + 1) + node * K
            acc = tl.zeros([BLOCK], dtype=tl.float64)
            skip = tl.zeros([BLOCK], dtype=tl.float64)
            cnt = tl.zeros([BLOCK], dtype=tl.int64)
            for j in tl.static_range(K):
                acc = acc + tl.load(sums_ptr + base + j, mask=mask, other=0.0)
                le = acc <= u
                cnt += le.to(tl.int64)
                skip = tl.where(le, acc, skip)
            u = u - skip
            node = node * K + tl.minimum(cnt, K - 1)
        slot = tl.minimum(node, C - 1)
        leaf_off = tl.load(offs_ptr + DEPTH)
        prio = tl.load(sums_ptr + leaf_off + slot, mask=mask, other=0.0)
        a1 = tl.load(added_ptr) - 1
        key = tl.where(slot <= a1, a1 - (a1 - slot) % C, -1)
        tl.store(slot_out + i, slot, mask=mask)
        tl.store(key_out + i, key, mask=mask)
        tl.store(prio_out + i, prio, mask=mask)
        if NORM_GLOBAL:
            pos = prio > 0
            ratio = tl.where(pos, prio / tl.load(mins_ptr), 1.0)
            w = pow_pos(ratio, -tl.load(beta_ptr), cst_ptr)
            tl.store(w_out + i, tl.where(pos, w, 0.0).to(tl.float32), mask=mask)


def sample_triton(tree, r: torch.Tensor, added: torch.Tensor, beta: torch.Tensor, norm_global: bool = True):
    """One launch: stratified descent for the whole batch. Same contract as ``sample_torch``."""
    B = r.shape[0]
    dev = r.device
    slots = torch.empty(B, dtype=torch.int64, device=dev)
    keys = torch.empty(B, dtype=torch.int64, device=dev)
    prio = torch.empty(B, dtype=torch.float64, device=dev)
    weights = torch.empty(B, dtype=torch.float32, device=dev) if norm_global else prio
    block, warps, grid = launch_config(B, 256)
    _sample_kernel[grid](tree.sums, tree.mins, tree.offsets_t, r, added, beta, math_constants(dev),
                         slots, keys, prio, weights, B, tree.capacity,
                         K=tree.fanout, DEPTH=tree.depth, NORM_GLOBAL=norm_global, BLOCK=block,
                         num_warps=warps, enable_fp_fusion=False)
    return slots, keys, prio, (weights if norm_global else None)


if numba is not None:
    import numpy as np

    @numba.njit(cache=True, nogil=True)
    def _sample_nb(sums, mins, offs, r, added, beta, cst, K, D, C, norm_global, slots, keys, prio, w):
        B = r.shape[0]
        fbits = np.empty(1, np.float64)
        ibits = fbits.view(np.int64)
        total = sums[0]
        u = np.empty(B, np.float64)
        node = np.zeros(B, np.int64)
        for i in range(B):
            u[i] = (np.float64(i) + r[i]) * total / B
        for level in range(D):  # level-major: the batch's independent loads overlap in memory
            for i in range(B):
                ui = u[i]
                fbits[0] = sums[offs[level] + node[i]]
                ibits[0] -= 1
                if fbits[0] < ui:
                    ui = fbits[0]
                base = offs[level + 1] + node[i] * K
                acc = 0.0
                skip = 0.0
                cnt = 0
                for j in range(K):
                    acc = acc + sums[base + j]
                    if acc <= ui:
                        cnt += 1
                        skip = acc
                    else:
                        break  # prefix sums only grow: no later child can count
                u[i] = ui - skip
                node[i] = node[i] * K + min(cnt, K - 1)
        a1 = added - 1
        for i in range(B):
            slot = min(node[i], C - 1)
            slots[i] = slot
            prio[i] = sums[offs[D] + slot]
            keys[i] = a1 - (a1 - slot) % C if slot <= a1 else -1
        if norm_global:
            pmin = mins[0]
            ratio = np.empty(B, np.float64)
            for i in range(B):
                ratio[i] = prio[i] / pmin if prio[i] > 0 else 1.0
            pw = pow_pos_nb(ratio, -beta, cst)
            for i in range(B):
                w[i] = np.float32(pw[i]) if prio[i] > 0 else np.float32(0.0)


def sample_numba(tree, r: torch.Tensor, added: torch.Tensor, beta: torch.Tensor, norm_global: bool = True):
    """Compiled CPU twin: one pass over the batch, each query descending on its own."""
    B = r.shape[0]
    slots = torch.empty(B, dtype=torch.int64)
    keys = torch.empty(B, dtype=torch.int64)
    prio = torch.empty(B, dtype=torch.float64)
    w = torch.empty(B, dtype=torch.float32)
    _sample_nb(tree.sums_np, tree.mins_np, tree.offsets_np, r.numpy(), int(added), float(beta.numpy()[0]),
               cpu_constants_np(), tree.fanout, tree.depth, tree.capacity, norm_global,
               slots.numpy(), keys.numpy(), prio.numpy(), w.numpy())
    return slots, keys, prio, (w if norm_global else None)

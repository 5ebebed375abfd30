"""Batched prefix-sum sampling: one descent of the K-ary sum tree for the whole batch.

For query i of B, with r_i ~ U[0, 1) from the caller's generator and T the root sum:

    u_i = (i + r_i) * T / B                     (stratum i of B; ``find`` takes u_i as given)

At each level u is first clamped below the current node's stored total T_n (to the next
float down), the K children c_0..c_{K-1} are prefix-summed left to right,
S_j = c_0 + ... + c_j, and the query steps into child k = #{j : S_j <= u}, then subtracts
S_{k-1}. Every parent is stored as exactly that left-to-right sum (``refresh``), so
S_{K-1} == T_n, hence u < S_{K-1} and the chosen child is the first with S_k > u, which has
positive mass: a leaf whose priority is zero (unfilled, invalid, padding) is never
returned, however u rounds (rounding that pushes u past T_n is absorbed by the clamp).

Outputs per query: the slot, its key (the newest key written to that slot), its leaf
priority p, and the IS weight, in one place for both normalizations:

    w_i = (p_i / m) ** -beta,  m = p_min over the tree (``normalize="global"``: this is
          (N P(i))**-beta / max_j (N P(j))**-beta, N and the total cancel), or
          m = min_j p_j over the batch (``"batch"``: divided by the batch's max weight);
    w_i = 0 where p_i == 0 (only possible when every stored row has priority 0).
"""
from __future__ import annotations

import torch

from ._jit import launched, numba, tl, triton
from ._math import launch_config, pow_pos_torch, seq_cumsum


def keys_from_slots(slots: torch.Tensor, added: torch.Tensor, capacity: int) -> torch.Tensor:
    """The newest key k < added with k % capacity == slot (-1 for a slot never written)."""
    a1 = added - 1
    return torch.where(slots <= a1, a1 - torch.remainder(a1 - slots, capacity), -1)


def weights_torch(prio: torch.Tensor, norm: torch.Tensor, beta, const) -> torch.Tensor:
    """w = (p / norm) ** -beta as float32, 0 where p == 0 (``norm`` a 0-dim tensor)."""
    pos = prio > 0
    w = pow_pos_torch(torch.where(pos, prio / norm, 1.0), -beta, const)
    return torch.where(pos, w, 0.0).to(torch.float32)


def sample_torch(st, sc, counter, r: torch.Tensor, beta, normalize: str | None = "global",
                 direct: bool = False):
    """Torch twin of ``sample_triton``: returns (slots, keys, priorities, weights or None).
    The whole batch moves down one level per step (branch-free). ``beta``: a float or a
    float64 device tensor (read on the device: a CUDA graph can be replayed with new values)."""
    B = r.shape[0]
    K = st.fanout
    u = r if direct else (torch.arange(B, device=r.device, dtype=torch.float64) + r) * st.sums[0] / B
    node = torch.zeros(B, dtype=torch.int64, device=r.device)
    for level in range(st.depth):
        below = (sc.levels[level].index_select(0, node).view(torch.int64) - 1).view(torch.float64)
        u = torch.where(below < u, below, u)
        csum = seq_cumsum(sc.rows[level + 1].index_select(0, node))  # [B, K]
        le = csum <= u.unsqueeze(1)
        u = u - torch.where(le, csum, 0.0).amax(1)
        node = node * K + le.sum(1).clamp_max(K - 1)
    slots = node.clamp_max(st.capacity - 1)
    prio = sc.leaves.index_select(0, slots)
    keys = keys_from_slots(slots, counter.t[0], st.capacity)
    if normalize is None:
        return slots, keys, prio, None
    if normalize == "global":
        norm = st.mins[0]
    else:
        norm = torch.where(prio > 0, prio, float("inf")).amin()
    return slots, keys, prio, weights_torch(prio, norm, beta, sc.const)


if triton is not None:
    from ._jit import pow_pos

    @triton.jit
    def _sample_kernel(sums_ptr, mins_ptr, offs_ptr, r_ptr, cnt_ptr, beta: tl.float64, beta_ptr, cst_ptr,
                       slot_out, key_out, prio_out, w_out, B, C,
                       K: tl.constexpr, DEPTH: tl.constexpr, DIRECT: tl.constexpr, NORM_GLOBAL: tl.constexpr,
                       BETA_T: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)
        i = pid * BLOCK + tl.arange(0, BLOCK)
        mask = i < B
        r = tl.load(r_ptr + i, mask=mask, other=0.0)
        if DIRECT:
            u = r
        else:
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
            for j in range(K):  # a run-time loop: compile time does not grow with K
                acc = acc + tl.load(sums_ptr + base + j, mask=mask, other=0.0)
                le = acc <= u
                cnt += le.to(tl.int64)
                skip = tl.where(le, acc, skip)
            u = u - skip
            node = node * K + tl.minimum(cnt, K - 1)
        slot = tl.minimum(node, C - 1)
        leaf_off = tl.load(offs_ptr + DEPTH)
        prio = tl.load(sums_ptr + leaf_off + slot, mask=mask, other=0.0)
        a1 = tl.load(cnt_ptr) - 1
        key = tl.where(slot <= a1, a1 - (a1 - slot) % C, -1)
        tl.store(slot_out + i, slot, mask=mask)
        tl.store(key_out + i, key, mask=mask)
        tl.store(prio_out + i, prio, mask=mask)
        if NORM_GLOBAL:
            if BETA_T:
                beta = tl.load(beta_ptr).to(tl.float64)
            pos = prio > 0
            ratio = tl.where(pos, prio / tl.load(mins_ptr), 1.0)
            w = pow_pos(ratio, -beta, cst_ptr)
            tl.store(w_out + i, tl.where(pos, w, 0.0).to(tl.float32), mask=mask)

    _sample_kernel = launched(_sample_kernel)

    @triton.jit
    def _batch_weights_kernel(prio_ptr, beta: tl.float64, beta_ptr, cst_ptr, w_out, B, BETA_T: tl.constexpr,
                              BLOCK: tl.constexpr):
        """``normalize="batch"``: one program, the batch's min positive priority, then w."""
        if BETA_T:
            beta = tl.load(beta_ptr).to(tl.float64)
        m = tl.full([BLOCK], float("inf"), dtype=tl.float64)
        start = B * 0  # (while loops: triton 3.6's interpreter cannot take range() of a run-time B)
        while start < B:
            i = start + tl.arange(0, BLOCK).to(tl.int64)
            p = tl.load(prio_ptr + i, mask=i < B, other=0.0)
            m = tl.minimum(m, tl.where(p > 0, p, float("inf")))
            start += BLOCK
        pmin = tl.min(m)
        start = B * 0
        while start < B:
            i = start + tl.arange(0, BLOCK).to(tl.int64)
            mask = i < B
            p = tl.load(prio_ptr + i, mask=mask, other=0.0)
            pos = p > 0
            w = pow_pos(tl.where(pos, p / pmin, 1.0), -beta, cst_ptr)
            tl.store(w_out + i, tl.where(pos, w, 0.0).to(tl.float32), mask=mask)
            start += BLOCK

    _batch_weights_kernel = launched(_batch_weights_kernel)


def sample_triton(st, sc, counter, r: torch.Tensor, beta, normalize: str | None = "global",
                  direct: bool = False):
    """One launch: the descent for the whole batch, and the weights with ``"global"``
    (``"batch"`` adds one single-program launch). Same contract as ``sample_torch``."""
    B = r.shape[0]
    dev = r.device
    slots = torch.empty(B, dtype=torch.int64, device=dev)
    keys = torch.empty(B, dtype=torch.int64, device=dev)
    prio = torch.empty(B, dtype=torch.float64, device=dev)
    w = torch.empty(B, dtype=torch.float32, device=dev) if normalize is not None else prio
    block, warps, grid = launch_config(B, 256)
    bt = isinstance(beta, torch.Tensor)
    b, bp = (0.0, beta) if bt else (float(beta), prio)
    _sample_kernel[grid](st.sums, st.mins, st.offsets_t, r, counter.t, b, bp, sc.const_t,
                         slots, keys, prio, w, B, st.capacity,
                         K=st.fanout, DEPTH=st.depth, DIRECT=direct, NORM_GLOBAL=normalize == "global",
                         BETA_T=bt, BLOCK=block, num_warps=warps, enable_fp_fusion=False)
    if normalize == "batch":
        block, warps, _ = launch_config(B, 1024)
        _batch_weights_kernel[(1,)](prio, b, bp, sc.const_t, w, B, BETA_T=bt, BLOCK=block, num_warps=warps,
                                    enable_fp_fusion=False)
    return slots, keys, prio, (w if normalize is not None else None)


if numba is not None:
    import numpy as np

    from ._jit import pow_pos_nb
    from ._math import CONSTANTS_NP

    @numba.njit(cache=True, nogil=True)
    def sample_nb(sums, mins, offs, r, added, beta, K, D, C, direct, norm, slots, keys, prio, w):
        """norm: 0 none, 1 global, 2 batch. Level-major: the batch's independent loads overlap."""
        B = r.shape[0]
        fbits = np.empty(1, np.float64)
        ibits = fbits.view(np.int64)
        total = sums[0]
        u = np.empty(B, np.float64)
        node = np.zeros(B, np.int64)
        for i in range(B):
            u[i] = r[i] if direct else (np.float64(i) + r[i]) * total / B
        for level in range(D):
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
        pmin = np.inf
        for i in range(B):
            slot = min(node[i], C - 1)
            slots[i] = slot
            prio[i] = sums[offs[D] + slot]
            keys[i] = a1 - (a1 - slot) % C if slot <= a1 else -1
            if prio[i] > 0 and prio[i] < pmin:
                pmin = prio[i]
        if norm == 0:
            return
        if norm == 1:
            pmin = mins[0]
        ratio = np.empty(B, np.float64)
        for i in range(B):
            ratio[i] = prio[i] / pmin if prio[i] > 0 else 1.0
        pw = pow_pos_nb(ratio, -beta, CONSTANTS_NP)
        for i in range(B):
            w[i] = np.float32(pw[i]) if prio[i] > 0 else np.float32(0.0)


_NORM = {None: 0, "global": 1, "batch": 2}


def sample_numba(st, sc, counter, r: torch.Tensor, beta, normalize: str | None = "global", direct: bool = False):
    """Compiled CPU twin: one compiled call for the descent, the keys and the weights.
    ``beta`` is a float here (the CPU reads it for free)."""
    slots, keys, prio, w = sample_host(st, sc, counter, r.numpy(), beta, normalize, direct)
    return torch.from_numpy(slots), keys, prio, w


def sample_host(st, sc, counter, r, beta, normalize: str | None = "global", direct: bool = False):
    """``sample_numba`` with the draws as a numpy array, returning the slots as one too (the
    CPU storage gathers with them directly)."""
    B = r.shape[0]
    slots = np.empty(B, dtype=np.int64)
    keys = np.empty(B, dtype=np.int64)
    prio = np.empty(B, dtype=np.float64)
    w = np.empty(B, dtype=np.float32)
    sample_nb(sc.sums, sc.mins, sc.offs, r, counter.np[0], float(beta), st.fanout, st.depth, st.capacity,
              direct, _NORM[normalize], slots, keys, prio, w)
    t = torch.from_numpy
    return slots, t(keys), t(prio), (t(w) if normalize is not None else None)

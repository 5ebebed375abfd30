"""Priority update from raw TD errors: the leaf writes with every PER rule applied on the
device, then the ancestors (``refresh``).

For item i with key k_i and TD error d_i (A = keys handed out, F = the key floor below which
keys are dead (cleared or rolled back), C = capacity, leaf = the value before this call):

    dropped_i = k_i < max(A - C, F)  or  k_i >= A       (row overwritten / never handed out)
                or leaf[k_i % C] == 0                   (row stored with valid=False)
    raw_i     = |d_i| + eps;  if NaN or inf: raw_i = running max raw (before this call)
    raw_i     = clamp(raw_i, lo, hi);   p_i = clamp(raw_i ** alpha, P_MIN, P_MAX)   (``_math``)
    leaf[k_i % C] = p_i   unless dropped_i, or a later item j > i has k_j == k_i
                          (the last write of a duplicate key wins)

Counters (int64, device): [0] += #replaced NaN/inf among kept items, [1] += #dropped.
Running maxima ``maxes`` = [max raw, max p] over the kept items with finite TD errors; every
item of one call sees the pre-call max, so the result does not depend on the order of the
batch. New rows enter with max p (``insert``), so alpha is applied once, to the raw value.
Negative TD errors are ordinary (|d| is used).
"""
from __future__ import annotations

import numpy as np
import torch

from ._jit import launched, numba, tl, triton
from ._math import launch_config, priority_torch
from .refresh import SINGLE_MAX, refresh_torch


def later_duplicate(keys: torch.Tensor) -> torch.Tensor:
    """later[i] = some j > i has keys[j] == keys[i] (a stable sort; no host sync)."""
    sk, perm = torch.sort(keys, stable=True)
    not_last = torch.zeros_like(keys, dtype=torch.bool)
    not_last[:-1] = sk[1:] == sk[:-1]
    return torch.empty_like(not_last).scatter_(0, perm, not_last)


def update_torch(st, sc, counter, keys: torch.Tensor, td: torch.Tensor) -> None:
    """Torch twin of ``update_triton``: leaves, counters, running maxima, then the levels."""
    C = st.capacity
    A, F = counter.t[0], counter.t[1]
    slot = torch.remainder(keys.clamp_min(0), C)
    old = sc.leaves.index_select(0, slot)
    drop = (keys < torch.maximum(A - C, F)) | (keys >= A) | (old == 0)
    raw = td.to(torch.float64).abs() + st.eps
    bad = ~torch.isfinite(raw)
    raw = torch.where(bad, st.maxes[0], raw).clamp(st.hyper[2], st.hyper[3])
    p = priority_torch(raw, st.hyper, sc.const)
    write = ~(drop | later_duplicate(keys))
    # Branch-free and deterministic on any device: items that must not write are sent to the
    # slot of the first writer j* with j*'s value (identical duplicate writes), or, if nothing
    # writes, to slot[0] with the value it already holds.
    j = torch.argmax(write.to(torch.uint8))
    anyw = write.any()
    tgt = torch.where(anyw, slot[j], slot[0])
    val = torch.where(anyw, p[j], old[0])
    sc.leaves.index_copy_(0, torch.where(write, slot, tgt), torch.where(write, p, val))
    st.counters.add_(torch.stack((bad & ~drop, drop)).sum(1))
    good = ~(drop | bad)
    torch.maximum(st.maxes, torch.where(good, torch.stack((raw, p)), 0.0).amax(1), out=st.maxes)
    refresh_torch(st, sc, slot)


if triton is not None:
    from ._jit import priority_tl
    from .refresh import refresh_levels_tl

    @triton.jit
    def _update_block(sums_ptr, keys_ptr, td_ptr, later_ptr, hyper_ptr, cst_ptr, slots_out,
                      i, B, A, lo, C, leaf_off, mraw0,
                      HAS_LATER: tl.constexpr, BLOCK: tl.constexpr, JBLOCK: tl.constexpr):
        """One block of items: writes the kept leaves and the slots to refresh; returns
        (#bad kept, #dropped, max raw, max p) of the block."""
        mask = i < B
        key = tl.load(keys_ptr + i, mask=mask, other=0)
        slot = tl.where(key < 0, 0, key % C)
        old = tl.load(sums_ptr + leaf_off + slot, mask=mask, other=0.0)
        drop = (key < lo) | (key >= A) | (old == 0.0)
        raw = tl.abs(tl.load(td_ptr + i, mask=mask, other=0.0).to(tl.float64)) + tl.load(hyper_ptr + 1)
        bad = (raw != raw) | (raw == float("inf"))
        raw = tl.where(bad, mraw0, raw)
        raw = tl.minimum(tl.maximum(raw, tl.load(hyper_ptr + 2)), tl.load(hyper_ptr + 3))
        p = priority_tl(raw, hyper_ptr, cst_ptr)
        if HAS_LATER:  # large batches: the launcher found the duplicates with a sort
            later = tl.load(later_ptr + i, mask=mask, other=0).to(tl.int32)
        else:  # compare with every later key (B*B/2 compares, no extra launch)
            later = tl.zeros([BLOCK], dtype=tl.int32)
            start = B * 0  # (a while loop: triton 3.6's interpreter cannot take range() of a run-time B)
            while start < B:
                j = start + tl.arange(0, JBLOCK).to(tl.int64)
                mj = j < B
                kj = tl.load(keys_ptr + j, mask=mj, other=0)
                eq = (kj[None, :] == key[:, None]) & (j[None, :] > i[:, None]) & mj[None, :]
                later = tl.maximum(later, tl.max(eq.to(tl.int32), axis=1))
                start += JBLOCK
        write = mask & (~drop) & (later == 0)
        tl.store(sums_ptr + leaf_off + slot, p, mask=write)
        tl.store(slots_out + i, slot, mask=mask)
        kept = mask & (~drop)
        good = kept & (~bad)
        n_bad = tl.sum((kept & bad).to(tl.int64))
        n_drop = tl.sum((mask & drop).to(tl.int64))
        m_raw = tl.max(tl.where(good, raw, 0.0))
        m_p = tl.max(tl.where(good, p, 0.0))
        return n_bad, n_drop, m_raw, m_p

    @triton.jit
    def _update_kernel(sums_ptr, mins_ptr, offs_ptr, cnt_ptr, keys_ptr, td_ptr, later_ptr, maxes_ptr,
                       maxnext_ptr, counters_ptr, hyper_ptr, cst_ptr, slots_out, B, C, log2k,
                       K: tl.constexpr, DEPTH: tl.constexpr, HAS_LATER: tl.constexpr, SINGLE: tl.constexpr,
                       BLOCK: tl.constexpr, JBLOCK: tl.constexpr):
        """SINGLE: one program does every item, then every level, then the maxima and the
        counters (one launch in all). Otherwise one block per program; maxima folded into
        ``max_next`` with an integer atomic max on the float64 bits (positive floats order
        like their bit patterns: exact and order-independent), levels by ``refresh``."""
        A = tl.load(cnt_ptr)
        lo = tl.maximum(A - C, tl.load(cnt_ptr + 1))
        leaf_off = tl.load(offs_ptr + DEPTH)
        mraw0 = tl.load(maxes_ptr)
        if SINGLE:
            n_bad = tl.zeros([1], dtype=tl.int64).sum()
            n_drop = tl.zeros([1], dtype=tl.int64).sum()
            m_raw = mraw0
            m_p = tl.load(maxes_ptr + 1)
            start = B * 0
            while start < B:
                i = start + tl.arange(0, BLOCK).to(tl.int64)
                b_bad, b_drop, b_raw, b_p = _update_block(
                    sums_ptr, keys_ptr, td_ptr, later_ptr, hyper_ptr, cst_ptr, slots_out, i, B, A, lo, C,
                    leaf_off, mraw0, HAS_LATER, BLOCK, JBLOCK)
                n_bad += b_bad
                n_drop += b_drop
                m_raw = tl.maximum(m_raw, b_raw)
                m_p = tl.maximum(m_p, b_p)
                start += BLOCK
            refresh_levels_tl(sums_ptr, mins_ptr, offs_ptr, slots_out, B, log2k, K, DEPTH, BLOCK)
            tl.store(counters_ptr, tl.load(counters_ptr) + n_bad)
            tl.store(counters_ptr + 1, tl.load(counters_ptr + 1) + n_drop)
            tl.store(maxes_ptr, m_raw)
            tl.store(maxes_ptr + 1, m_p)
        else:
            i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
            b_bad, b_drop, b_raw, b_p = _update_block(
                sums_ptr, keys_ptr, td_ptr, later_ptr, hyper_ptr, cst_ptr, slots_out, i, B, A, lo, C,
                leaf_off, mraw0, HAS_LATER, BLOCK, JBLOCK)
            tl.atomic_add(counters_ptr, b_bad)
            tl.atomic_add(counters_ptr + 1, b_drop)
            tl.atomic_max(maxnext_ptr, b_raw.to(tl.int64, bitcast=True))
            tl.atomic_max(maxnext_ptr + 1, b_p.to(tl.int64, bitcast=True))

    _update_kernel = launched(_update_kernel)


SORT_DEDUP_MIN = 2048


def update_triton(st, sc, counter, keys: torch.Tensor, td: torch.Tensor) -> None:
    """One launch for batches up to ``SINGLE_MAX`` keys (leaves, levels, maxima, counters);
    larger ones: duplicates by a device sort, one launch for the leaves, one per level, and
    a copy of the new maxima. Same results as ``update_torch``, bit for bit."""
    from .refresh import refresh_triton
    B = keys.shape[0]
    single = B <= SINGLE_MAX
    block, warps, grid = launch_config(B, 128)
    has_later = B >= SORT_DEDUP_MIN
    later = later_duplicate(keys).view(torch.uint8) if has_later else keys
    slots = torch.empty(B, dtype=torch.int64, device=keys.device)
    if not single:  # the programs fold their maxima into max_next, starting from the current ones
        sc.max_next.copy_(st.maxes)
    _update_kernel[(1,) if single else grid](
        st.sums, st.mins, st.offsets_t, counter.t, keys, td, later, st.maxes, sc.max_next_bits, st.counters,
        st.hyper_t, sc.const_t, slots, B, st.capacity, st.log2k, K=st.fanout, DEPTH=st.depth,
        HAS_LATER=has_later, SINGLE=single, BLOCK=block, JBLOCK=32, num_warps=warps, enable_fp_fusion=False)
    if not single:
        refresh_triton(st, sc, slots)
        st.maxes.copy_(sc.max_next)


def update_fast_numba(st, sc, counter):
    """A function ``fast(keys, td) -> bool``: the whole ``update_numba`` on the metadata
    checks alone when ``keys`` is an int64 [B] CPU tensor and ``td`` a float32/float64 CPU
    tensor of the same shape, both dense and contiguous (what ``sample`` returned and a loss
    on the CPU gives); False, having done nothing, for anything else (then the checked path
    runs). ``td`` is read in place, so it may require grad."""
    i64, f32, f64, strided = torch.int64, torch.float32, torch.float64, torch.strided
    arrays = (sc.sums, sc.mins, sc.offs, counter.np, sc.maxes, sc.counters, sc.hyper_np)  # kept alive here
    for a, dt in zip(arrays, (np.float64, np.float64, np.int64, np.int64, np.float64, np.int64, np.float64)):
        if not a.flags.c_contiguous or a.dtype != dt:  # update_ctx_nb reads them at these types
            raise TypeError(f"update_fast_numba: expected C-contiguous {np.dtype(dt)} arrays, got {a.dtype}")
    ctx = np.array([v for a in arrays for v in (a.ctypes.data, a.shape[0])] + list(sc.layout), np.int64)

    def fast(keys, td) -> bool:
        if type(keys) is not torch.Tensor or type(td) is not torch.Tensor or keys.dtype is not i64:
            return False
        t64 = td.dtype is f64
        if not (t64 or td.dtype is f32) or keys.layout is not strided or td.layout is not strided:
            return False
        if not (keys.is_cpu and td.is_cpu and keys.dim() == 1 and td.shape == keys.shape and keys.shape[0]
                and keys.is_contiguous() and td.is_contiguous()):
            return False
        update_ctx_nb(ctx, keys.data_ptr(), td.data_ptr(), keys.shape[0], t64)
        return True
    return fast


if numba is not None:
    from ._jit import priority_nb, ptr_f32, ptr_f64, ptr_i64
    from .refresh import refresh_slots_nb

    @numba.njit(cache=True, nogil=True)
    def update_nb(sums, mins, offs, cnt, keys, td, maxes, counters, hyper, C, K, D, log2k):
        """Items in batch order (so the last write of a duplicate wins), then the levels of
        the written slots, sorted (a parent shared by several is recomputed once)."""
        B = keys.shape[0]
        A = cnt[0]
        lo = max(A - C, cnt[1])
        leaf = offs[D]
        eps = hyper[1]
        raw = np.empty(B, np.float64)
        bad = np.empty(B, np.bool_)
        m0 = maxes[0]
        for i in range(B):
            x = abs(np.float64(td[i])) + eps
            bad[i] = not np.isfinite(x)
            raw[i] = m0 if bad[i] else x
        p = priority_nb(raw, hyper)  # raw is clamped in place
        m_raw = maxes[0]
        m_p = maxes[1]
        slots = np.empty(B, np.int64)
        w = 0
        for i in range(B):
            k = keys[i]
            if k < lo or k >= A or sums[leaf + k % C] == 0.0:
                counters[1] += 1
                continue
            s = k % C
            sums[leaf + s] = p[i]
            slots[w] = s
            w += 1
            if bad[i]:
                counters[0] += 1
            else:
                m_raw = max(m_raw, raw[i])
                m_p = max(m_p, p[i])
        maxes[0] = m_raw
        maxes[1] = m_p
        if w:
            refresh_slots_nb(sums, mins, offs, np.sort(slots[:w]), K, D, log2k)

    @numba.njit(cache=True, nogil=True)
    def update_ptr_nb(sums, mins, offs, cnt, keys_addr, td_addr, B, td64, maxes, counters, hyper, C, K, D, log2k):
        """``update_nb`` on B keys (int64) and TD errors (float64 if ``td64``, else float32)
        read in place at their addresses."""
        keys = numba.carray(ptr_i64(keys_addr), B)
        if td64:
            update_nb(sums, mins, offs, cnt, keys, numba.carray(ptr_f64(td_addr), B), maxes, counters, hyper,
                      C, K, D, log2k)
        else:
            update_nb(sums, mins, offs, cnt, keys, numba.carray(ptr_f32(td_addr), B), maxes, counters, hyper,
                      C, K, D, log2k)

    @numba.njit(cache=True, nogil=True)
    def update_ctx_nb(ctx, keys_addr, td_addr, B, td64):
        """``update_ptr_nb`` with the tree's arrays and layout read from one int64 table: the
        (address, length) of sums, mins, offs, the key counter, maxes, counters, hyper, then
        C, K, D, log2k (one argument to unbox instead of eleven: ~1 µs less per call)."""
        sums = numba.carray(ptr_f64(ctx[0]), ctx[1])
        mins = numba.carray(ptr_f64(ctx[2]), ctx[3])
        offs = numba.carray(ptr_i64(ctx[4]), ctx[5])
        cnt = numba.carray(ptr_i64(ctx[6]), ctx[7])
        maxes = numba.carray(ptr_f64(ctx[8]), ctx[9])
        counters = numba.carray(ptr_i64(ctx[10]), ctx[11])
        hyper = numba.carray(ptr_f64(ctx[12]), ctx[13])
        update_ptr_nb(sums, mins, offs, cnt, keys_addr, td_addr, B, td64, maxes, counters, hyper,
                      ctx[14], ctx[15], ctx[16], ctx[17])


def update_numba(st, sc, counter, keys: torch.Tensor, td: torch.Tensor) -> None:
    """Compiled CPU twin: one compiled call for the leaves, counters, maxima and levels.
    ``keys`` and ``td`` are contiguous CPU tensors (``_checks.check_keys``), read in place."""
    if td.dtype is not torch.float32 and td.dtype is not torch.float64:  # float16/bfloat16: numba has no such type
        td = td.to(torch.float64)  # exact, and what the twin does first
    update_ptr_nb(sc.sums, sc.mins, sc.offs, counter.np, keys.data_ptr(), td.data_ptr(), keys.shape[0],
                  td.dtype is torch.float64, sc.maxes, sc.counters, sc.hyper_np, *sc.layout)

"""Row copies for every field of a batch in one launch: scatter (adding) and gather (sampling).

A field is seen as raw words, [rows, W] of the widest integer type dividing a row (int64 for
most fields), so one kernel serves every dtype and shape; copies are bitwise. For up to
``MAX_FIELDS`` fields per launch (more fields: more launches):

    scatter ("ring"):  dst_f[(A + skip + i) % C] = src_f[skip + i]    i < n - skip; A = counter[0]
                       keys_out[i] = A + i                            (uniform replay's keys)
    scatter ("rows"):  dst_f[i * mul + add] = src_f[i]               (n-step windows: row e*n + w)
    gather  ("slots"): out_f[i] = src_f[idx[i]]
    gather  ("draw"):  s_i = min(floor(r_i * L), L - 1), L = min(A - F, C): uniform slots drawn
                       on the device, out_f[i] = src_f[s_i], plus s_i and its key

The torch twins (``scatter_torch``/``gather_torch``) are the reference; the launchers pick a
block of rows x words so that small rows (a few words) and frames (thousands) both fill the
GPU. The row index math is int64 everywhere.
"""
from __future__ import annotations

import torch

from ._jit import launched, tl, triton
from ._math import next_power_of_2

MAX_FIELDS = 8


def scatter_torch(dsts, srcs, rows: torch.Tensor) -> None:
    """dst_f[rows[i]] = src_f[i] for every field (wide-word views)."""
    for d, s in zip(dsts, srcs):
        d.index_copy_(0, rows, s)


def gather_torch(srcs, rows: torch.Tensor, outs) -> None:
    """out_f[i] = src_f[rows[i]] for every field (wide-word views)."""
    for s, o in zip(srcs, outs):
        torch.index_select(s, 0, rows, out=o)


def ring_rows(counter, n: int, capacity: int) -> torch.Tensor:
    """The slots of the next n keys' surviving rows (the twins' index for a ring scatter)."""
    skip = max(n - capacity, 0)
    return torch.remainder(counter.t[0] + torch.arange(skip, n, device=counter.t.device), capacity)


def _block(max_words: int) -> tuple[int, int, int]:
    """(ROWS, CHUNK, warps): CHUNK words of ROWS rows per program, ~2048 words a program."""
    chunk = min(1024, next_power_of_2(max(max_words, 1)))
    rows = max(1, 2048 // chunk)
    return rows, chunk, 4 if rows * chunk <= 2048 else 8


if triton is not None:

    @triton.jit
    def _copy_field(src, dst, src_row, dst_row, W, j, row_ok):
        """Words j of one field for a block of rows: dst[dst_row, j] = src[src_row, j]."""
        m = row_ok[:, None] & (j[None, :] < W)
        v = tl.load(src + src_row[:, None] * W + j[None, :], mask=m)
        tl.store(dst + dst_row[:, None] * W + j[None, :], v, mask=m)

    @triton.jit
    def _copy_fields(s0, d0, w0, s1, d1, w1, s2, d2, w2, s3, d3, w3, s4, d4, w4, s5, d5, w5, s6, d6, w6,
                     s7, d7, w7, src_row, dst_row, j, row_ok, NF: tl.constexpr):
        """``_copy_field`` for the first NF of eight (src, dst, words) fields (one launch for all)."""
        _copy_field(s0, d0, src_row, dst_row, w0, j, row_ok)
        if NF > 1:
            _copy_field(s1, d1, src_row, dst_row, w1, j, row_ok)
        if NF > 2:
            _copy_field(s2, d2, src_row, dst_row, w2, j, row_ok)
        if NF > 3:
            _copy_field(s3, d3, src_row, dst_row, w3, j, row_ok)
        if NF > 4:
            _copy_field(s4, d4, src_row, dst_row, w4, j, row_ok)
        if NF > 5:
            _copy_field(s5, d5, src_row, dst_row, w5, j, row_ok)
        if NF > 6:
            _copy_field(s6, d6, src_row, dst_row, w6, j, row_ok)
        if NF > 7:
            _copy_field(s7, d7, src_row, dst_row, w7, j, row_ok)

    @triton.jit
    def _rows_kernel(s0, d0, w0, s1, d1, w1, s2, d2, w2, s3, d3, w3, s4, d4, w4, s5, d5, w5, s6, d6, w6,
                     s7, d7, w7, cnt_ptr, idx_ptr, aux_out, key_out, n, skip, C, mul, add,
                     NF: tl.constexpr, MODE: tl.constexpr, KEYS: tl.constexpr, ROWS: tl.constexpr,
                     CHUNK: tl.constexpr):
        """MODE 0: ring scatter; 1: scatter to rows i*mul+add; 2: gather by idx; 3: gather by
        uniform draws (idx = r, float64). See the module docstring."""
        i = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)
        j = tl.program_id(1).to(tl.int64) * CHUNK + tl.arange(0, CHUNK).to(tl.int64)
        ok = i < n
        if MODE == 0:
            A = tl.load(cnt_ptr)
            ok = ok & (i >= skip)
            src = i
            dst = (A + i) % C
            if KEYS:
                tl.store(key_out + i, A + i, mask=(i < n) & ((i * 0 + tl.program_id(1)) == 0))
        elif MODE == 1:
            src = i
            dst = i * mul + add
        elif MODE == 2:
            src = tl.load(idx_ptr + i, mask=ok, other=0)
            dst = i
        else:
            A = tl.load(cnt_ptr)
            live = tl.minimum(A - tl.load(cnt_ptr + 1), C)
            r = tl.load(idx_ptr + i, mask=ok, other=0.0)
            src = tl.minimum((r * live.to(tl.float64)).to(tl.int64), live - 1)
            dst = i
            first = ok & ((i * 0 + tl.program_id(1)) == 0)
            a1 = A - 1
            tl.store(aux_out + i, src, mask=first)
            tl.store(key_out + i, a1 - (a1 - src) % C, mask=first)
        _copy_fields(s0, d0, w0, s1, d1, w1, s2, d2, w2, s3, d3, w3, s4, d4, w4, s5, d5, w5, s6, d6, w6,
                     s7, d7, w7, src, dst, j, ok, NF)

    _rows_kernel = launched(_rows_kernel)


def _launch(srcs, dsts, mode: int, n: int, counter=None, idx=None, aux_out=None, key_out=None, skip: int = 0,
            C: int = 1, mul: int = 0, add: int = 0) -> None:
    """One launch per MAX_FIELDS fields (keys/aux written by the first)."""
    for f0 in range(0, len(srcs), MAX_FIELDS):
        s, d = srcs[f0:f0 + MAX_FIELDS], dsts[f0:f0 + MAX_FIELDS]
        widths = [t.shape[1] for t in s]
        rows, chunk, warps = _block(max(widths))
        args = []
        for k in range(MAX_FIELDS):  # unused slots repeat the first field (never touched: NF)
            a, b, w = (s[k], d[k], widths[k]) if k < len(s) else (s[0], d[0], widths[0])
            args += [a, b, w]
        first = f0 == 0
        cnt = counter.t if counter is not None else s[0]
        grid = (-(-n // rows), -(-max(widths) // chunk))
        _rows_kernel[grid](*args, cnt, idx if idx is not None else s[0],
                           aux_out if aux_out is not None else s[0], key_out if key_out is not None else s[0],
                           n, skip, C, mul, add, NF=len(s), MODE=mode, KEYS=first and key_out is not None,
                           ROWS=rows, CHUNK=chunk, num_warps=warps)
        if mode == 3 and not first:  # later groups reuse the slots the first one drew
            mode, idx = 2, aux_out


def scatter_ring_triton(dsts, srcs, counter, n: int, capacity: int, keys_out=None) -> None:
    """Rows of the next n keys into the ring (the last ``capacity`` survive); keys if asked."""
    _launch(srcs, dsts, 0, n, counter=counter, key_out=keys_out, skip=max(n - capacity, 0), C=capacity)


def scatter_rows_triton(dsts, srcs, n: int, mul: int, add: int) -> None:
    """dst_f[i * mul + add] = src_f[i] (an n-step window slot: i = env, mul = n, add = w)."""
    _launch(srcs, dsts, 1, n, mul=mul, add=add)


def gather_triton(srcs, idx: torch.Tensor, outs) -> None:
    """out_f[i] = src_f[idx[i]]."""
    _launch(srcs, outs, 2, idx.shape[0], idx=idx)


def gather_uniform_triton(srcs, r: torch.Tensor, counter, capacity: int, outs, slots_out, keys_out) -> None:
    """Uniform slots from the draws r (float64 [B]) and the live count on the device, their
    keys, and the rows: the whole uniform sample in one launch."""
    _launch(srcs, outs, 3, r.shape[0], counter=counter, idx=r, aux_out=slots_out, key_out=keys_out, C=capacity)

"""Shared device math: a power function made only of correctly rounded operations.

Why not ``torch.pow``: the Triton kernels and their torch twins must agree bit for bit,
on CUDA and under the Triton interpreter (which runs numpy). ``torch.pow``, numpy's
``power`` and libdevice's ``pow`` round differently in the last bit. ``pow_pos`` below
uses only +, -, *, integer bit operations, table look-ups and ``floor``; each of those is
exact or correctly rounded everywhere, and both twins apply them in the same order, so
priorities and IS weights are identical on every device and backend (and a checkpoint
moved between CPU and CUDA samples the same batches).

    x**y = exp(y * ln x),  x > 0 finite,
    ln x  = e*ln2 + ln(c_j) + log1p(m/c_j - 1),   x = m * 2**e, m in [1, 2), j = top 6 bits of m
    exp t = 2**(q) * 2**(j/64) * expm1-series(r),  t = (64q + j) * ln2/64 + r, |r| <= ln2/128

Relative error is below 1e-13 over the range priorities and weights use.
Also here: ``seq_cumsum``/``seq_cumprod`` (left-to-right, the order the kernels use) and
``launch_config`` (the one helper that picks block size and warps).
"""
from __future__ import annotations

import math

import torch

try:  # triton is optional: CPU-only machines run the torch twins
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None
    tl = None

try:  # numba is optional: the compiled CPU backend
    import numba
    import numpy as np
except ImportError:  # pragma: no cover
    numba = None

TABLE_BITS = 6
TABLE = 1 << TABLE_BITS
N_LOG = 7  # log1p(r) terms, |r| <= 1/127
N_EXP = 6  # expm1(r) terms, |r| <= ln2/128

# layout of the constant vector
C_LN2 = 0
C_INV_LN2_T = 1  # TABLE / ln 2
C_LN2_T = 2  # ln 2 / TABLE
OFF_INVC = 3
OFF_LNC = OFF_INVC + TABLE
OFF_EXP2 = OFF_LNC + TABLE
OFF_LOGC = OFF_EXP2 + TABLE
OFF_EXPC = OFF_LOGC + N_LOG
N_CONST = OFF_EXPC + N_EXP

MANT_MASK = 0x000FFFFFFFFFFFFF
ONE_BITS = 0x3FF0000000000000


def _constants() -> list[float]:
    c = [math.log(2.0), TABLE / math.log(2.0), math.log(2.0) / TABLE]
    invc = [1.0 / (1.0 + (j + 0.5) / TABLE) for j in range(TABLE)]
    c += invc
    c += [-math.log(v) for v in invc]
    c += [2.0 ** (j / TABLE) for j in range(TABLE)]
    c += [(-1.0) ** (k + 1) / k for k in range(1, N_LOG + 1)]
    c += [1.0 / math.factorial(k) for k in range(1, N_EXP + 1)]
    assert len(c) == N_CONST
    return c


class TorchConstants:
    """The constant vector on one device (``all``, what kernels read), with the tables as
    views and the scalars as Python floats (the same doubles) for the torch twins."""

    def __init__(self, device: torch.device):
        c = _constants()
        self.all = torch.tensor(c, dtype=torch.float64, device=device)
        self.invc = self.all[OFF_INVC:OFF_INVC + TABLE]
        self.lnc = self.all[OFF_LNC:OFF_LNC + TABLE]
        self.exp2 = self.all[OFF_EXP2:OFF_EXP2 + TABLE]
        self.logc = self.all[OFF_LOGC:OFF_LOGC + N_LOG]
        self.expc = self.all[OFF_EXPC:OFF_EXPC + N_EXP]
        self.ln2, self.inv_ln2_t, self.ln2_t = c[C_LN2], c[C_INV_LN2_T], c[C_LN2_T]


_CONST_CACHE: dict[torch.device, TorchConstants] = {}


def torch_constants(device) -> TorchConstants:
    device = torch.device(device)
    t = _CONST_CACHE.get(device)
    if t is None:
        t = _CONST_CACHE[device] = TorchConstants(device)
    return t


def math_constants(device) -> torch.Tensor:
    """The float64 constant vector the kernels read (one copy per device)."""
    return torch_constants(device).all


_CPU_NP = None


def cpu_constants_np():
    """The CPU constant vector as a numpy array (what the numba loops read), made once."""
    global _CPU_NP
    if _CPU_NP is None:
        _CPU_NP = math_constants("cpu").numpy()
    return _CPU_NP


def seq_cumsum(x: torch.Tensor) -> torch.Tensor:
    """Cumulative sum over the last dim, strictly left to right (the kernels' order).

    On CPU ``torch.cumsum`` is that sequential loop (tests check it); CUDA's is a parallel
    scan, so there the columns are added one by one.
    """
    if x.device.type == "cpu":
        return torch.cumsum(x, -1)
    cols = [x[..., 0]]
    for k in range(1, x.shape[-1]):
        cols.append(cols[-1] + x[..., k])
    return torch.stack(cols, -1)


def seq_cumprod(x: torch.Tensor) -> torch.Tensor:
    """Cumulative product over the last dim, strictly left to right."""
    if x.device.type == "cpu":
        return torch.cumprod(x, -1)
    cols = [x[..., 0]]
    for k in range(1, x.shape[-1]):
        cols.append(cols[-1] * x[..., k])
    return torch.stack(cols, -1)


def _series(r: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """sum_k coef[k] * r**(k+1), powers and sum both left to right."""
    powers = seq_cumprod(r.unsqueeze(-1).expand(*r.shape, coef.shape[0]))
    return seq_cumsum(powers * coef)[..., -1]


def pow_pos_torch(x: torch.Tensor, y, c: TorchConstants) -> torch.Tensor:
    """x**y for float64 x > 0 (finite, normal) and finite y; torch twin of ``pow_pos``."""
    bits = x.view(torch.int64)
    e = ((bits >> 52) - 1023).to(torch.float64)
    j = (bits >> (52 - TABLE_BITS)) & (TABLE - 1)
    m = ((bits & MANT_MASK) | ONE_BITS).view(torch.float64)
    r = m * c.invc[j] - 1.0
    t = (e * c.ln2 + c.lnc[j] + _series(r, c.logc)) * y
    kf = torch.floor(t * c.inv_ln2_t + 0.5)
    k = kf.to(torch.int64)
    em = _series(t - kf * c.ln2_t, c.expc) + 1.0
    scale = ((((k >> TABLE_BITS).clamp(-1022, 1023)) + 1023) << 52).view(torch.float64)
    return c.exp2[k & (TABLE - 1)] * em * scale


if triton is not None:

    @triton.jit
    def _series_tl(r, cst_ptr, OFF: tl.constexpr, N: tl.constexpr):
        pw = r
        acc = pw * tl.load(cst_ptr + OFF)
        for k in tl.static_range(1, N):
            pw = pw * r
            acc = acc + pw * tl.load(cst_ptr + OFF + k)
        return acc

    @triton.jit
    def pow_pos(x, y, cst_ptr):
        """x**y for float64 x > 0, as ``pow_pos_torch`` (same operations, same order)."""
        bits = x.to(tl.int64, bitcast=True)
        e = ((bits >> 52) - 1023).to(tl.float64)
        j = (bits >> 46) & 63
        m = ((bits & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000).to(tl.float64, bitcast=True)
        r = m * tl.load(cst_ptr + 3 + j) - 1.0
        t = (e * tl.load(cst_ptr) + tl.load(cst_ptr + 67 + j) + _series_tl(r, cst_ptr, 195, 7)) * y
        kf = tl.floor(t * tl.load(cst_ptr + 1) + 0.5)
        k = kf.to(tl.int64)
        em = _series_tl(t - kf * tl.load(cst_ptr + 2), cst_ptr, 202, 6) + 1.0
        q = tl.minimum(tl.maximum(k >> 6, -1022), 1023)
        scale = ((q + 1023) << 52).to(tl.float64, bitcast=True)
        return tl.load(cst_ptr + 131 + (k & 63)) * em * scale


if numba is not None:

    @numba.njit(cache=True, nogil=True)
    def pow_pos_nb(x, y, cst):
        """x**y elementwise for a float64 array x > 0: the CPU-compiled twin of ``pow_pos``."""
        n = x.shape[0]
        bits = x.view(np.int64)
        mb = np.empty(n, np.int64)
        for i in range(n):
            mb[i] = (bits[i] & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000
        m = mb.view(np.float64)
        out = np.empty(n, np.float64)
        sb = np.empty(n, np.int64)
        for i in range(n):
            b = bits[i]
            e = np.float64((b >> 52) - 1023)
            j = (b >> 46) & 63
            r = m[i] * cst[3 + j] - 1.0
            pw = r
            acc = pw * cst[195]
            for k in range(1, 7):
                pw = pw * r
                acc = acc + pw * cst[195 + k]
            t = (e * cst[0] + cst[67 + j] + acc) * y
            kf = np.floor(t * cst[1] + 0.5)
            ki = np.int64(kf)
            r2 = t - kf * cst[2]
            pw = r2
            acc = pw * cst[202]
            for k in range(1, 6):
                pw = pw * r2
                acc = acc + pw * cst[202 + k]
            q = min(max(ki >> 6, -1022), 1023)
            sb[i] = (q + 1023) << 52
            out[i] = cst[131 + (ki & 63)] * (acc + 1.0)
        scale = sb.view(np.float64)
        for i in range(n):
            out[i] = out[i] * scale[i]
        return out


# the kernel above hard-codes these offsets (constexpr globals are awkward in @jit)
assert (OFF_INVC, OFF_LNC, OFF_EXP2, OFF_LOGC, OFF_EXPC) == (3, 67, 131, 195, 202)


def launch_config(n: int, max_block: int = 1024) -> tuple[int, int, tuple[int]]:
    """(BLOCK, num_warps, grid) for a 1-D launch over n items: one helper for every kernel."""
    block = max(16, min(max_block, triton.next_power_of_2(max(n, 1))))
    warps = 2 if block <= 128 else 4 if block <= 512 else 8
    return block, warps, (triton.cdiv(max(n, 1), block),)

"""Shared device math: a power function made only of correctly rounded operations, the
priority bounds, and the one helper that picks block size and warps.

Why not ``torch.pow``: the Triton kernels, the numba loops and their torch twins must agree
bit for bit, on CUDA and under the Triton interpreter (which runs numpy). ``torch.pow``,
numpy's ``power`` and libdevice's ``pow`` round differently in the last bit. ``pow_pos``
uses only +, -, *, integer bit operations, table look-ups and ``floor``; each of those is
exact or correctly rounded everywhere, and every twin applies them in the same order, so
priorities and IS weights are identical on every device and backend (and a checkpoint moved
between CPU and CUDA samples the same batches).

    x**y = exp(y * ln x),  x > 0 finite,
    ln x  = e*ln2 + ln(c_j) + log1p(m/c_j - 1),   x = m * 2**e, m in [1, 2), j = top 6 bits of m
    exp t = 2**(q) * 2**(j/64) * expm1-series(r),  t = (64q + j) * ln2/64 + r, |r| <= ln2/128

Relative error is below 1e-13 for |t| <= 700, the range the bounds below keep it in.

Priority bounds. A priority is p = (|d| + eps) ** alpha clamped to [P_MIN, P_MAX] = [2**-500,
2**500] (the raw value is clamped first, so that ``pow_pos`` never leaves its range):

- p > 0 always: a row that may be sampled never has priority 0 (0 marks rows that must not be);
- the root sum <= capacity * P_MAX <= 2**540 and every intermediate of the sampling descent,
  ``(i + r) * total / B``, stays finite; the IS-weight ratio p / p_min <= 2**1000 is finite;
- p is monotone (non-decreasing) in |d|: huge TD errors all get P_MAX, never a wrapped value.

This module needs torch and numpy only; the Triton and numba versions of ``pow_pos`` are in
``_jit`` (imported by the op files, under their guards).
"""
from __future__ import annotations

import math

import numpy as np
import torch

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

P_MAX = 2.0 ** 500
P_MIN = 2.0 ** -500


def raw_bounds(alpha: float) -> tuple[float, float]:
    """[lo, hi] for the raw value |d| + eps such that lo ** alpha >= P_MIN and
    hi ** alpha <= P_MAX (up to the last bit; the result is clamped again after the power)."""
    if alpha == 0.0:
        return 0.0, float(np.finfo(np.float64).max)
    hi = math.exp(math.log(P_MAX) / alpha) if math.log(P_MAX) / alpha < 709.0 else float(np.finfo(np.float64).max)
    lo = math.exp(math.log(P_MIN) / alpha) if math.log(P_MIN) / alpha > -708.0 else float(np.finfo(np.float64).tiny)
    return lo, hi


def hyper_values(alpha: float, eps: float) -> list[float]:
    """The float64 vector the update kernels read: [alpha, eps, raw lo, raw hi, P_MIN, P_MAX]."""
    return [alpha, eps, *raw_bounds(alpha), P_MIN, P_MAX]


def _constants() -> list[float]:
    c = [math.log(2.0), TABLE / math.log(2.0), math.log(2.0) / TABLE]
    invc = [1.0 / (1.0 + (j + 0.5) / TABLE) for j in range(TABLE)]
    c += invc
    c += [-math.log(v) for v in invc]
    c += [2.0 ** (j / TABLE) for j in range(TABLE)]
    c += [(-1.0) ** (k + 1) / k for k in range(1, N_LOG + 1)]
    c += [1.0 / math.factorial(k) for k in range(1, N_EXP + 1)]
    if len(c) != N_CONST:  # pragma: no cover - a layout edit that forgot a table
        raise RuntimeError("constant table layout mismatch")
    return c


CONSTANTS = _constants()
CONSTANTS_NP = np.array(CONSTANTS, dtype=np.float64)  # what the numba loops read


class TorchConstants:
    """The constant vector on one device (``all``, what kernels read), with the tables as
    views and the scalars as Python floats (the same doubles) for the torch twins."""

    def __init__(self, device: torch.device):
        src = torch.from_numpy(CONSTANTS_NP.copy())  # on CUDA: pinned, copied asynchronously (no sync)
        self.all = src.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else src.to(device)
        self.invc = self.all[OFF_INVC:OFF_INVC + TABLE]
        self.lnc = self.all[OFF_LNC:OFF_LNC + TABLE]
        self.exp2 = self.all[OFF_EXP2:OFF_EXP2 + TABLE]
        self.logc = self.all[OFF_LOGC:OFF_LOGC + N_LOG]
        self.expc = self.all[OFF_EXPC:OFF_EXPC + N_EXP]
        c = CONSTANTS
        self.ln2, self.inv_ln2_t, self.ln2_t = c[C_LN2], c[C_INV_LN2_T], c[C_LN2_T]


_CONST_CACHE: dict[torch.device, TorchConstants] = {}


def torch_constants(device) -> TorchConstants:
    """The constants on ``device``, made once per device (call it at construction, not in a
    hot call: the first copy to a GPU is a host -> device transfer)."""
    device = torch.device(device)
    t = _CONST_CACHE.get(device)
    if t is None:
        t = _CONST_CACHE[device] = TorchConstants(device)
    return t


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
    """x**y for float64 x > 0 (finite, normal) and finite y with |y ln x| <= 700; the torch
    twin of ``pow_pos``."""
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


def priority_torch(raw: torch.Tensor, hyper: list[float], c: TorchConstants) -> torch.Tensor:
    """p = clamp(clamp(raw, lo, hi) ** alpha, P_MIN, P_MAX) (see the module docstring)."""
    alpha, _eps, lo, hi, pmin, pmax = hyper
    p = pow_pos_torch(raw.clamp(lo, hi), alpha, c)
    return p.clamp(pmin, pmax)


def next_power_of_2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def launch_config(n: int, max_block: int = 1024) -> tuple[int, int, tuple[int]]:
    """(BLOCK, num_warps, grid) for a 1-D launch over n items: one helper for every kernel."""
    block = max(16, min(max_block, next_power_of_2(max(n, 1))))
    warps = 2 if block <= 128 else 4 if block <= 512 else 8
    return block, warps, (-(-max(n, 1) // block),)


# the Triton and numba versions (``_jit``) hard-code these offsets (constexpr globals are awkward in @jit)
if (OFF_INVC, OFF_LNC, OFF_EXP2, OFF_LOGC, OFF_EXPC) != (3, 67, 131, 195, 202):  # pragma: no cover
    raise RuntimeError("constant table offsets changed: update pow_pos/pow_pos1_nb")

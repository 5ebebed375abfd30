"""The optional compilers and the jitted math every op shares.

``triton``, ``tl`` and ``numba`` are the modules, or None when missing or broken (any failure
to import just disables that backend). ``pow_pos``/``priority_tl`` (Triton) and
``pow_pos_nb``/``priority_nb`` (numba) exist only when their compiler does; they are the
exact twins of ``_math.pow_pos_torch``/``priority_torch``. Imported by the op files only,
so ``import gpu_replay`` imports neither compiler.
"""
from __future__ import annotations

import importlib
import os
import threading

import numpy as np

from ._math import CONSTANTS_NP


def _optional(name: str):
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001
        return None


triton = _optional("triton")
tl = _optional("triton.language") if triton is not None else None
numba = _optional("numba")


class _Serialized:
    """A kernel whose launches hold one process-wide lock: Triton's interpreter patches
    ``triton.language`` while it runs a kernel, so two threads interpreting at once crash it
    ("Did you forget to add @triton.jit?"). Compiled kernels on a GPU are not wrapped."""

    _lock = threading.RLock()

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            with self._lock:
                return launch(*args, **kwargs)
        return run

    def __getattr__(self, name):
        return getattr(self.kernel, name)


def launched(kernel):
    """Mark a kernel launched from Python (``kernel[grid](...)``): serialized under the interpreter."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return _Serialized(kernel)
    return kernel


# ----------------------------------------------------------------------------- Triton
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

    @triton.jit
    def priority_tl(raw, hyper_ptr, cst_ptr):
        """``priority_torch`` in Triton: the clamped power of a raw value."""
        x = tl.minimum(tl.maximum(raw, tl.load(hyper_ptr + 2)), tl.load(hyper_ptr + 3))
        p = pow_pos(x, tl.load(hyper_ptr), cst_ptr)
        return tl.minimum(tl.maximum(p, tl.load(hyper_ptr + 4)), tl.load(hyper_ptr + 5))


# ----------------------------------------------------------------------------- numba
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

    @numba.njit(cache=True, nogil=True)
    def priority_nb(raw, hyper):
        """``priority_torch`` for a float64 array of raw values (clamped in place)."""
        for i in range(raw.shape[0]):
            raw[i] = min(max(raw[i], hyper[2]), hyper[3])
        p = pow_pos_nb(raw, hyper[0], CONSTANTS_NP)
        for i in range(p.shape[0]):
            p[i] = min(max(p[i], hyper[4]), hyper[5])
        return p



    from numba import types as _nbt
    from numba.extending import intrinsic as _intrinsic

    def _pointer_to(dtype):
        ptr = _nbt.CPointer(dtype)

        @_intrinsic
        def to_ptr(typingctx, addr):
            def codegen(context, builder, sig, args):
                return builder.inttoptr(args[0], context.get_value_type(ptr))
            return ptr(_nbt.int64), codegen
        return to_ptr

    # An address (``tensor.data_ptr()``) as a typed pointer, for ``numba.carray(ptr, n)``: a
    # compiled loop reads a contiguous CPU tensor in place, where ``tensor.numpy()`` costs
    # ~1.5 µs a call (more than the whole update of a few keys).
    ptr_i64 = _pointer_to(_nbt.int64)
    ptr_f64 = _pointer_to(_nbt.float64)
    ptr_f32 = _pointer_to(_nbt.float32)

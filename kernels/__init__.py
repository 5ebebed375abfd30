"""Device code: one file per operation (installed as ``gpu_replay.kernels``).

Each operation file holds ``_name_kernel`` (Triton) and its launcher ``name_triton``, the
pure-torch twin ``name_torch`` with the same signature (the reference, the test oracle and
the backend for any device), and ``name_numba``, the same loop compiled for the CPU:

    insert.py   hand out keys, enter new rows with the max priority, refresh, advance
    update.py   priorities from raw TD errors (every PER rule), refresh
    sample.py   stratified descent for a batch (or given masses), keys, IS weights
    refresh.py  ancestors of touched leaves; a whole-tree rebuild
    rows.py     row copies for the Triton path: one launch for every field of a batch
    emit.py     the n-step emission (k, return, discount, terminated) for the Triton path
    _math.py    the bit-exact power function, priority bounds, launch_config

Results agree bit for bit across backends (see ``_math``). A backend's table of ops is
built on first use (``backend(name)``); triton and numba are optional, and an op file
only uses their names under ``if triton is not None`` / ``if numba is not None``.
"""
from __future__ import annotations

import functools
import os
from types import SimpleNamespace

BACKENDS = ("triton", "numba", "torch")


@functools.cache
def available(name: str) -> bool:
    """Whether backend ``name`` can run here (imports the optional package on first ask)."""
    if name == "torch":
        return True
    from . import _jit
    return (_jit.triton if name == "triton" else _jit.numba) is not None


def triton_runs_on_cpu() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def backend(name: str) -> SimpleNamespace:
    """The op table of backend ``name``: prepare(state) -> scratch, insert, update, sample,
    refresh (each ``op(state, scratch, counter, ...)``, see the op files); numba adds
    ``sample_host`` and ``update_fast``."""
    if not available(name):
        raise ValueError(f"backend={name!r}: {'triton' if name == 'triton' else 'numba'} is not installed; "
                         f"use backend='torch'")
    from . import insert, refresh, sample, update
    ops = {op: getattr(mod, f"{op}_{name}") for op, mod in
           (("insert", insert), ("update", update), ("sample", sample), ("refresh", refresh))}
    if name == "numba":  # the CPU's shortcuts: the draws as numpy, an update on metadata checks only
        ops["sample_host"] = sample.sample_host
        ops["update_fast"] = update.update_fast_numba
    return SimpleNamespace(name=name, prepare=_PREPARE[name], **ops)


def _prepare_torch(st):
    """The torch twins' view of a tree: per-level views (made once) and the constants."""
    from ._math import torch_constants
    o, s, K = st.offsets, st.sizes, st.fanout
    levels = [st.sums[o[lv]:o[lv] + s[lv]] for lv in range(st.depth + 1)]
    min_levels = [st.mins[o[lv]:o[lv] + s[lv]] for lv in range(st.depth)]
    return SimpleNamespace(levels=levels, rows=[v.view(-1, K) if lv else None for lv, v in enumerate(levels)],
                           min_levels=min_levels,
                           min_rows=[v.view(-1, K) if lv else None for lv, v in enumerate(min_levels)],
                           leaves=levels[-1], const=torch_constants(st.sums.device))


def _prepare_numba(st):
    """numpy views of the tree (no per-call ``.numpy()``) for the compiled loops."""
    import numpy as np
    if st.sums.device.type != "cpu":
        raise ValueError(f"backend='numba' runs on the CPU only, got device {st.sums.device}")
    return SimpleNamespace(sums=st.sums.numpy(), mins=st.mins.numpy(), maxes=st.maxes.numpy(),
                           counters=st.counters.numpy(), offs=np.array(st.offsets, dtype=np.int64),
                           hyper_np=np.array(st.hyper, dtype=np.float64), no_mask=np.zeros(1, dtype=np.bool_),
                           layout=(st.capacity, st.fanout, st.depth, st.log2k))


def _prepare_triton(st):
    """The constants on the device and the multi-program update's scratch for the maxima."""
    import torch

    from ._math import torch_constants
    max_next = st.maxes.clone()
    return SimpleNamespace(const_t=torch_constants(st.sums.device).all, max_next=max_next,
                           max_next_bits=max_next.view(torch.int64))


_PREPARE = {"torch": _prepare_torch, "numba": _prepare_numba, "triton": _prepare_triton}

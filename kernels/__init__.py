"""Device code: the Triton kernels and their pure-torch twins (installed as gpu_replay.kernels).

Each operation has one file: ``_name_kernel`` (Triton), its launcher ``name_triton``, the
pure-torch twin ``name_torch`` with the same signature (the reference, the test oracle and
the backend for any device), and ``name_numba``, the same loop compiled for the CPU.
Results agree bit for bit (see ``_math`` for why priorities use ``pow_pos``).
"""
from ._math import math_constants, pow_pos_torch, seq_cumsum, torch_constants, triton
from .insert import insert_torch
from .levels import refresh_torch
from .sample import sample_torch
from .update import update_torch

from ._math import numba

HAVE_TRITON = triton is not None
HAVE_NUMBA = numba is not None

TORCH_OPS = {"sample": sample_torch, "update": update_torch, "insert": insert_torch, "refresh": refresh_torch}
TRITON_OPS = None
if HAVE_TRITON:
    from .insert import insert_triton
    from .levels import refresh_triton
    from .sample import sample_triton
    from .update import update_triton

    TRITON_OPS = {"sample": sample_triton, "update": update_triton, "insert": insert_triton,
                  "refresh": refresh_triton}

NUMBA_OPS = None
if HAVE_NUMBA:
    from .insert import insert_numba
    from .levels import refresh_numba
    from .sample import sample_numba
    from .update import update_numba

    NUMBA_OPS = {"sample": sample_numba, "update": update_numba, "insert": insert_numba, "refresh": refresh_numba}

__all__ = ["TORCH_OPS", "TRITON_OPS", "NUMBA_OPS", "HAVE_TRITON", "HAVE_NUMBA", "math_constants", "torch_constants", "pow_pos_torch",
           "seq_cumsum"]

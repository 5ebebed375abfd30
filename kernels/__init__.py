"""Device code: the Triton kernels and their pure-torch twins (installed as gpu_replay.kernels).

Each operation has one file: ``_name_kernel`` (Triton), its launcher ``name_triton`` and the
twin ``name_torch`` with the same signature. The twins are the CPU backend and the test
oracle; results agree bit for bit (see ``_math`` for why priorities use ``pow_pos``).
"""
from ._math import math_constants, pow_pos_torch, seq_cumsum, torch_constants, triton
from .insert import insert_torch
from .levels import refresh_torch
from .sample import sample_torch
from .update import update_torch

HAVE_TRITON = triton is not None

TORCH_OPS = {"sample": sample_torch, "update": update_torch, "insert": insert_torch, "refresh": refresh_torch}
TRITON_OPS = None
if HAVE_TRITON:
    from .insert import insert_triton
    from .levels import refresh_triton
    from .sample import sample_triton
    from .update import update_triton

    TRITON_OPS = {"sample": sample_triton, "update": update_triton, "insert": insert_triton,
                  "refresh": refresh_triton}

__all__ = ["TORCH_OPS", "TRITON_OPS", "HAVE_TRITON", "math_constants", "torch_constants", "pow_pos_torch",
           "seq_cumsum"]

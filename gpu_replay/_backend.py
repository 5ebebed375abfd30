"""Which backend runs a part's device work, by device kind."""
from __future__ import annotations

import torch

from . import kernels

# CUDA tensors run the Triton kernels; CPU tensors the same loops compiled by numba (eager
# torch pays ~1.5 µs of dispatch per op); any other device, or a missing package, the torch twins.
AUTO = {"cuda": "triton", "cpu": "numba"}
CHOICES = ("auto", "triton", "numba", "torch")


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend name for ``device`` (``"auto"`` picks by ``AUTO``, falling back to torch)."""
    if backend not in CHOICES:
        raise ValueError(f"backend: expected one of {list(CHOICES)}, got {backend!r}")
    if backend == "auto":
        backend = AUTO.get(device.type, "torch")
        return backend if kernels.available(backend) else "torch"
    if backend == "numba":
        if device.type != "cpu":
            raise ValueError(f"backend='numba': expected a CPU device (numba runs on the CPU only), got {device}")
        if not kernels.available("numba"):
            raise ValueError("backend='numba': expected numba to be installed (pip install numba), got no numba; "
                             "use backend='torch'")
    if backend == "triton":
        if not kernels.available("triton"):
            raise ValueError("backend='triton': expected triton to be installed, got no triton; use backend='torch'")
        if device.type != "cuda" and not kernels.triton_runs_on_cpu():
            raise ValueError(f"backend='triton': expected a CUDA device (or TRITON_INTERPRET=1 for the CPU), "
                             f"got device {device}")
    return backend

"""Host -> device transfers of a call's inputs: one pinned buffer, one asynchronous copy.

A call on the Triton path (CUDA) that gets numpy arrays or CPU tensors packs all of them into
one page-locked (pinned) host buffer, at 64-byte aligned offsets, converted to the dtype they
are stored in (on the host, where it is free), and copies that buffer to the device with a
single ``non_blocking`` copy: one launch, no host sync (a copy from pinned memory never waits
for the device, unlike one from pageable memory), and the pinned buffer is recycled by
torch's caching host allocator only after the copy has run. Inputs already on the device
are used as they are (converted on the device if their dtype differs).

``pinned_empty`` is the one place that allocates staging memory (the CPU test of the CUDA
path registers what it returns as pinned; without CUDA there is no pinned memory).
"""
from __future__ import annotations

import numpy as np
import torch

_ALIGN = 64


def pinned_empty(nbytes: int, device: torch.device) -> torch.Tensor:
    """A uint8 host buffer, page-locked when the target is a CUDA device."""
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=device.type == "cuda")


def _host_array(t, dtype: torch.dtype, device: torch.device) -> np.ndarray | None:
    """A numpy view of a host input, or None for a tensor already on ``device`` (on the CPU
    under the Triton interpreter, a CPU tensor counts as one: numpy data is the host's)."""
    if isinstance(t, np.ndarray):
        return t
    if t.device == device or t.device.type != "cpu":
        return None
    t = t.detach()
    if t.dtype == torch.bfloat16 or dtype == torch.bfloat16:
        return None  # numpy has no bfloat16: converted by torch below
    return t.numpy()


# the numpy dtype of each torch dtype numpy has (storage and frames use it too)
NP_OF = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64), torch.float16: np.dtype(np.float16),
         torch.int64: np.dtype(np.int64), torch.int32: np.dtype(np.int32), torch.int16: np.dtype(np.int16),
         torch.int8: np.dtype(np.int8), torch.uint8: np.dtype(np.uint8), torch.bool: np.dtype(np.bool_),
         torch.complex64: np.dtype(np.complex64), torch.complex128: np.dtype(np.complex128)}


def to_device(inputs: list, dtypes: list[torch.dtype], device: torch.device, stage: bool) -> list[torch.Tensor]:
    """``inputs`` (numpy arrays or tensors) on ``device`` in ``dtypes``, contiguous and
    detached. With ``stage``, every host input goes through one pinned buffer and one copy."""
    out: list = [None] * len(inputs)
    host = []
    for i, (x, dt) in enumerate(zip(inputs, dtypes)):
        a = _host_array(x, dt, device) if stage and dt in NP_OF else None
        if a is None:
            t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
            t = t.detach()
            if t.device != device or t.dtype != dt:
                t = t.to(device=device, dtype=dt, non_blocking=t.device.type == "cpu")
            out[i] = t.contiguous()
        else:
            host.append((i, a, dt))
    if host:
        offs, total = [], 0
        for _, a, dt in host:
            offs.append(total)
            total += -(-(a.size * dt.itemsize) // _ALIGN) * _ALIGN
        buf = pinned_empty(max(total, 1), device)
        buf_np = buf.numpy()
        for (i, a, dt), o in zip(host, offs):
            npdt = NP_OF[dt]
            nb = a.size * np.dtype(npdt).itemsize
            buf_np[o:o + nb].view(npdt).reshape(a.shape)[...] = a  # numpy casts as it copies
        dev = torch.empty(buf.shape[0], dtype=torch.uint8, device=device)
        dev.copy_(buf, non_blocking=True)  # the one copy
        for (i, a, dt), o in zip(host, offs):
            nb = a.size * dt.itemsize
            out[i] = dev[o:o + nb].view(dt).view(a.shape)
    return out

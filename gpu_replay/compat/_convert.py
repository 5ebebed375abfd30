"""Input conversion shared by the adapters: the loose inputs those APIs accept (Python
scalars, lists, numpy arrays of any layout, tensors on any device) as tensor views."""
from __future__ import annotations

import numpy as np
import torch

from .._checks import as_device, check_int


def tensor(value, name: str) -> torch.Tensor:
    """A tensor (no device move) from a tensor, numpy array, numpy/Python scalar or list.
    Unsigned 64-bit arrays (e.g. ``np.ulonglong`` indices) become int64."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if value is None:
        raise TypeError(f"{name}: expected a tensor, array or number, got None")
    if isinstance(value, (list, tuple)):
        try:
            value = np.asarray(value)
        except ValueError as e:
            raise ValueError(f"{name}: expected a rectangular array, got {type(value).__name__} ({e})") from None
    if isinstance(value, (bool, int, float, np.generic)):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name}: expected a torch.Tensor, numpy.ndarray or number, got {type(value).__name__}")
    if value.dtype == object or value.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected a numeric array, got numpy dtype {value.dtype}")
    if value.dtype.kind == "u" and value.dtype.itemsize == 8:
        value = value.astype(np.int64)  # keys fit in int64; a larger value wraps negative: a dropped key
    # (np.ascontiguousarray would turn a 0-d array into a 1-d one)
    return torch.from_numpy(value if value.flags.c_contiguous else np.ascontiguousarray(value))


def rows(value, name: str, n: int, shape: tuple, allow_reshape: bool = False) -> torch.Tensor:
    """``value`` as ``[n, *shape]``; ``allow_reshape`` accepts any layout with that many elements."""
    t = tensor(value, name)
    want = (n, *shape)
    if tuple(t.shape) == want:
        return t
    if allow_reshape and t.numel() == int(np.prod(want)):
        return t.reshape(want)
    raise ValueError(f"{name}: expected shape {list(want)}, got {list(t.shape)}")


def flags(value, name: str, n: int) -> torch.Tensor:
    """``[n]`` bool from bools or numbers (nonzero = True); [n, 1] is accepted too."""
    t = rows(value, name, n, (), allow_reshape=True)
    return t if t.dtype == torch.bool else t != 0


def shape_of(size, name: str) -> tuple:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        return (check_int(size, name, 1),)
    try:
        shape = tuple(size)
    except TypeError:
        raise TypeError(f"{name}: expected an int or a tuple of ints, got {size!r}") from None
    for s in shape:
        check_int(s, name, 1)
    return tuple(int(s) for s in shape)


def default_device(device) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return as_device(device)

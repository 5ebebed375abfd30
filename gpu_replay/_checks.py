"""Every input check of the library, and the one state-dict reader.

Every message has the form ``name: expected X, got Y``. Checks read metadata only (type,
shape, dtype, device): free, no host sync. A public call runs all of them before it
changes anything, so a rejected call leaves the buffer as it was.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch


def as_device(device) -> torch.device:
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def to_torch_dtype(dtype, name: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return torch.from_numpy(np.empty(0, dtype=np.dtype(dtype))).dtype
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: expected a torch or numpy dtype, got {dtype!r}") from e


def normalize_spec(spec, name: str = "spec") -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """{field: (shape, dtype)} with shapes as tuples of positive ints and torch dtypes."""
    if not isinstance(spec, Mapping) or not spec:
        raise TypeError(f"{name}: expected a non-empty mapping field name -> (shape, dtype), got {spec!r}")
    out = {}
    for field, entry in spec.items():
        if not isinstance(field, str) or not field:
            raise TypeError(f"{name}: expected non-empty strings as field names, got {field!r}")
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise TypeError(f"{name}[{field!r}]: expected (shape, dtype), got {entry!r}")
        shape, dtype = entry
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise ValueError(f"{name}[{field!r}]: expected a shape of non-negative ints, got {shape!r}")
        if any(s == 0 for s in shape):
            raise ValueError(f"{name}[{field!r}]: expected a shape with no zero dimension (such a field "
                             f"stores nothing), got {shape!r}")
        out[field] = (tuple(int(s) for s in shape), to_torch_dtype(dtype, f"{name}[{field!r}]"))
    return out


def check_int(value, name: str, lo: int = 1, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name}: expected an int {rng}, got {value}")
    return value


def check_float(value, name: str, lo: float, hi: float = math.inf, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name}: expected a float, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value > hi or (value <= lo if lo_open else value < lo):
        left, right = "(" if lo_open else "[", "]" if math.isfinite(hi) else ")"
        raise ValueError(f"{name}: expected a finite float in {left}{lo}, {hi}{right}, got {value}")
    return value


def check_choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")
    return value


def as_tensor(value, name: str, lists: bool = False) -> torch.Tensor:
    """A tensor view of a tensor or numpy array (no copy, no device move); numpy scalars,
    and with ``lists`` Python numbers, lists and tuples, are made into arrays first."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.generic) or (lists and isinstance(value, (list, tuple, int, float, bool))):
        try:
            value = np.asarray(value)
        except ValueError as e:
            raise ValueError(f"{name}: expected a rectangular array, got {type(value).__name__} ({e})") from None
    if isinstance(value, np.ndarray):
        if value.dtype == object or value.dtype.kind not in "biuf":
            raise TypeError(f"{name}: expected a numeric array, got numpy dtype {value.dtype}")
        try:  # (np.ascontiguousarray would turn a 0-d array into a 1-d one)
            return torch.from_numpy(value if value.flags.c_contiguous else np.ascontiguousarray(value))
        except TypeError as e:
            raise TypeError(f"{name}: expected a numpy dtype torch supports, got {value.dtype}") from e
    kinds = "a torch.Tensor or numpy.ndarray" + (", number or list" if lists else "")
    raise TypeError(f"{name}: expected {kinds}, got {type(value).__name__}")


def check_dense(t: torch.Tensor, name: str, device: torch.device) -> torch.Tensor:
    """A strided tensor on the CPU or on ``device`` (sparse, meta, or another accelerator is
    refused here, before anything is written)."""
    if t.layout != torch.strided:
        raise TypeError(f"{name}: expected a dense (strided) tensor, got layout {t.layout}")
    if t.device.type != "cpu" and t.device != device:
        raise ValueError(f"{name}: expected a tensor on the CPU or on {device}, got device {t.device}")
    return t


def check_mask(valid, n: int, device: torch.device, name: str = "valid") -> torch.Tensor | None:
    """None, or a bool [n] mask moved to ``device``."""
    if valid is None:
        return None
    t = as_tensor(valid, name)
    if t.dtype != torch.bool:
        raise TypeError(f"{name}: expected dtype torch.bool, got {t.dtype}")
    if tuple(t.shape) != (n,):
        raise ValueError(f"{name}: expected shape [{n}] (one per row), got {tuple(t.shape)}")
    check_dense(t, name, device)
    return to_device(t, device)


def check_keys(keys, td, device: torch.device, td_name: str = "td_errors") -> tuple[torch.Tensor, torch.Tensor]:
    """keys: int64 [B]; td: floating [B] (or [B, 1]); lists are accepted. Returned on
    ``device``, contiguous and detached (TD errors often still require grad)."""
    if type(keys) is torch.Tensor and type(td) is torch.Tensor and keys.dtype is torch.int64 and \
            td.dtype in _FAST_TD and keys.device == device == td.device and keys.dim() == 1 and \
            td.shape == keys.shape and keys.shape[0] and not td.requires_grad and keys.is_contiguous() and \
            td.is_contiguous() and keys.layout is td.layout is torch.strided:
        return keys, td  # the usual case (what sample() returned, TD errors on the device): metadata only
    keys = as_tensor(keys, "keys", lists=True)
    td = as_tensor(td, td_name, lists=True)
    if keys.dtype != torch.int64:
        raise TypeError(f"keys: expected dtype torch.int64 (the keys sample() returned), got {keys.dtype}")
    if keys.dim() != 1 or keys.shape[0] < 1:
        raise ValueError(f"keys: expected shape [B] with B >= 1, got {tuple(keys.shape)}")
    if not td.is_floating_point():
        raise TypeError(f"{td_name}: expected a floating dtype, got {td.dtype}")
    B = keys.shape[0]
    if tuple(td.shape) not in ((B,), (B, 1)):
        raise ValueError(f"{td_name}: expected shape [{B}] (one per key), got {tuple(td.shape)}")
    check_dense(keys, "keys", device)
    check_dense(td, td_name, device)
    return to_device(keys, device), to_device(td.detach().reshape(B), device)


_FAST_TD = (torch.float32, torch.float64)


def numpy_casts(dt: torch.dtype) -> frozenset:
    """The numpy dtypes whose torch dtype casts safely to ``dt`` (``torch.can_cast``): what the
    CPU fast paths accept as they are (numpy then casts as it writes)."""
    out = set()
    for npdt in (np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8, np.uint8, np.bool_):
        if torch.can_cast(torch.from_numpy(np.empty(0, npdt)).dtype, dt):
            out.add(np.dtype(npdt))
    return frozenset(out)


def host_numpy(t) -> np.ndarray:
    """A numpy view of host data (a numpy array as it is; a tensor detached, copied to the
    host only if it is on a device)."""
    if isinstance(t, np.ndarray):
        return t
    return t.detach().numpy() if t.device.type == "cpu" else t.detach().cpu().numpy()


def constant_to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU constant (layout numbers, tables) on ``device`` without a host sync: on CUDA
    through pinned memory with an asynchronous copy (a tree or window made inside a hot call,
    e.g. by the first masked add, must not wait for the device)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def to_device(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``t`` on ``device`` in ``dtype``, contiguous and detached. Host -> device copies are
    asynchronous (non_blocking: the bytes are staged by the driver before the call returns;
    the Triton path stages them in pinned memory itself, see ``storage``)."""
    t = t.detach()
    if t.device != device or (dtype is not None and t.dtype != dtype):
        t = t.to(device=device, dtype=dtype, non_blocking=t.device.type == "cpu")
    return t.contiguous()


def field_set_error(where: str, expected, got) -> ValueError:
    missing = [k for k in expected if k not in got]
    unknown = [k for k in got if k not in expected]
    parts = ([f"missing field(s) {missing}"] if missing else []) + ([f"unknown field(s) {unknown}"] if unknown else [])
    return ValueError(f"{where}: expected exactly the fields {list(expected)}, got {list(got)} "
                      f"({'; '.join(parts)})")


def check_field(value, name: str, lead: tuple, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """A tensor view of ``value`` with shape [*lead, *shape] and a dtype that casts safely to
    ``dtype`` (``torch.can_cast``: float64 -> float32 rounds, int64 -> uint8 wraps)."""
    t = as_tensor(value, name)
    if tuple(t.shape) != (*lead, *shape):
        want = "[" + ", ".join(str(s) for s in (*lead, *shape)) + "]"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(t.shape)}")
    if not torch.can_cast(t.dtype, dtype):
        raise TypeError(f"{name}: expected dtype {dtype} (or one that casts to it safely), got {t.dtype}")
    return t


def check_rows(spec: dict, batch, device: torch.device, name: str = "batch") -> tuple[int, dict[str, torch.Tensor]]:
    """Validate a mapping of rows ``{field: [n, *shape]}``; returns (n, tensor views). Only
    metadata is read; the caller converts and writes afterwards."""
    if not isinstance(batch, Mapping):
        raise TypeError(f"{name}: expected a mapping field name -> tensor or array, got {type(batch).__name__}")
    if len(batch) != len(spec) or any(k not in batch for k in spec):
        raise field_set_error(name, spec, batch)
    n = None
    out = {}
    for field, (shape, dt) in spec.items():
        what = f"{name}[{field!r}]"
        t = as_tensor(batch[field], what)
        if t.dim() != len(shape) + 1 or tuple(t.shape[1:]) != shape:
            want = ", ".join(("B", *map(str, shape)))
            raise ValueError(f"{what}: expected shape [{want}], got {tuple(t.shape)}")
        if not torch.can_cast(t.dtype, dt):
            raise TypeError(f"{what}: expected dtype {dt} (or one that casts to it safely), got {t.dtype}")
        if n is None:
            n = t.shape[0]
        elif t.shape[0] != n:
            raise ValueError(f"{what}: expected batch size {n} (the other fields'), got {t.shape[0]}")
        out[field] = check_dense(t, what, device)
    if n < 1:
        raise ValueError(f"{name}: expected at least one row, got batch size {n}")
    return n, out


# ----------------------------------------------------------------------------- state dicts
class StateReader:
    """Reads a state dict, checking each entry (``load_state_dict`` of the buffer, the tree
    and NStep use it before they change anything). Raises ValueError naming the entry."""

    def __init__(self, sd, where: str = "load_state_dict"):
        if not isinstance(sd, Mapping):
            raise ValueError(f"{where}: expected a state dict (a mapping), got {type(sd).__name__}")
        self.sd = sd
        self.where = where

    def _fail(self, key, expected, got):
        raise ValueError(f"{self.where}.{key}: expected {expected}, got {got}")

    def has(self, key) -> bool:
        return key in self.sd

    def get(self, key):
        if key not in self.sd:
            raise ValueError(f"{self.where}: expected an entry {key!r}, got none (entries: {list(self.sd)})")
        return self.sd[key]

    def same(self, key, want) -> None:
        """An entry that must equal this object's configuration."""
        got = self.get(key)
        if type(got) is not type(want) or got != want:
            raise ValueError(f"{self.where}.{key}: this object has {want!r}, the state has {got!r}")

    def int(self, key, lo: int = 0, hi: int | None = None) -> int:
        v = self.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            self._fail(key, f"an int in [{lo}, {'inf' if hi is None else hi}]", repr(v))
        return v

    def tensor(self, key, shape, dtype, finite: bool = False, nonneg: bool = False) -> torch.Tensor:
        v = self.get(key)
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != tuple(shape) or v.dtype != dtype:
            got = f"{v.dtype} {list(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
            self._fail(key, f"{dtype} {list(shape)}", got)
        if v.layout != torch.strided or v.device.type == "meta":
            self._fail(key, "a dense tensor", f"layout {v.layout} on {v.device}")
        if finite and v.numel() and not bool(torch.isfinite(v).all()):
            self._fail(key, "finite values", "NaN or inf")
        if nonneg and v.numel() and bool((v < 0).any()):
            self._fail(key, "non-negative values", "a negative value")
        return v

    def sub(self, key) -> "StateReader":
        return StateReader(self.get(key), f"{self.where}.{key}")

    def check(self, ok: bool, key, expected, got) -> None:
        if not ok:
            self._fail(key, expected, got)

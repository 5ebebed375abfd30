"""Struct-of-arrays ring storage and the input checks every public call uses.

Every check reads tensor metadata only (shape, dtype, device): free, no host sync. A check
runs before anything is written, so a rejected call leaves the buffer as it was.
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


def to_torch_dtype(dtype, what: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return torch.from_numpy(np.empty(0, dtype=np.dtype(dtype))).dtype
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what}: expected a torch or numpy dtype, got {dtype!r}") from e


def normalize_spec(spec) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """{name: (shape, dtype)} with shapes as int tuples and torch dtypes."""
    if not isinstance(spec, Mapping) or not spec:
        raise TypeError(f"spec: expected a non-empty mapping name -> (shape, dtype), got {spec!r}")
    out = {}
    for name, entry in spec.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"spec: field names must be non-empty strings, got {name!r}")
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise TypeError(f"spec[{name!r}]: expected (shape, dtype), got {entry!r}")
        shape, dtype = entry
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if not all(isinstance(s, int) and s >= 0 for s in shape):
            raise ValueError(f"spec[{name!r}]: shape must be non-negative ints, got {shape!r}")
        out[name] = (shape, to_torch_dtype(dtype, f"spec[{name!r}]"))
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
    bad = not math.isfinite(value) or value > hi or (value <= lo if lo_open else value < lo)
    if bad:
        left = "(" if lo_open else "["
        right = "]" if math.isfinite(hi) else ")"
        raise ValueError(f"{name}: expected a finite float in {left}{lo}, {hi}{right}, got {value}")
    return value


def as_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value)) if value.dtype != object else _bad(value, name)
    return _bad(value, name)


def _bad(value, name):
    raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(value).__name__}")


def check_keys(keys, td, device: torch.device, name_td: str = "td_errors") -> tuple[torch.Tensor, torch.Tensor]:
    """keys: int64 [B]; td: floating [B] (or [B, 1]); returned on ``device``, contiguous and
    detached (TD errors often still require grad). Lists are taken as torch.tensor(list)."""
    keys = torch.tensor(keys) if isinstance(keys, (list, tuple)) else as_tensor(keys, "keys")
    td = torch.tensor(td, dtype=torch.float32) if isinstance(td, (list, tuple)) else as_tensor(td, name_td)
    if keys.dtype != torch.int64:
        raise TypeError(f"keys: expected dtype torch.int64 (the keys sample() returned), got {keys.dtype}")
    if keys.dim() != 1 or keys.shape[0] < 1:
        raise ValueError(f"keys: expected shape [B] with B >= 1, got {tuple(keys.shape)}")
    if not td.is_floating_point():
        raise TypeError(f"{name_td}: expected a floating dtype, got {td.dtype}")
    B = keys.shape[0]
    if tuple(td.shape) not in ((B,), (B, 1)):
        raise ValueError(f"{name_td}: expected shape [{B}] (one per key), got {tuple(td.shape)}")
    # non_blocking: a host -> device copy from pageable memory is staged by the driver before
    # the call returns, so it is safe, and it does not wait for the stream (no sync)
    return (keys.detach().to(device, non_blocking=True).contiguous(),
            td.detach().reshape(B).to(device, non_blocking=True).contiguous())


def check_mask(valid, n: int, device: torch.device, name: str = "valid") -> torch.Tensor | None:
    if valid is None:
        return None
    valid = as_tensor(valid, name)
    if valid.dtype != torch.bool:
        raise TypeError(f"{name}: expected dtype torch.bool, got {valid.dtype}")
    if tuple(valid.shape) != (n,):
        raise ValueError(f"{name}: expected shape [{n}] (one per row), got {tuple(valid.shape)}")
    return valid.to(device, non_blocking=True).contiguous()


def _wide(t: torch.Tensor, rows: int) -> torch.Tensor:
    """The same bytes seen as [rows, m] of the widest integer type that divides a row: row
    copies are bitwise, and index_copy_/index_select move whole words (7x faster than
    byte by byte for uint8 frames on a CPU)."""
    raw = t.reshape(rows, -1).view(torch.uint8)
    for dt in (torch.int64, torch.int32, torch.int16):
        if raw.shape[1] % dt.itemsize == 0:
            return raw.view(dt)
    return raw


_NP_INT = {torch.int64: np.int64, torch.int32: np.int32, torch.int16: np.int16, torch.uint8: np.uint8}


class Storage:
    """One preallocated tensor [capacity, *shape] per field, written at slot = key % capacity."""

    def __init__(self, capacity: int, spec, device: torch.device):
        self.capacity = capacity
        self.spec = normalize_spec(spec)
        self.device = device
        self.data = {name: torch.zeros((capacity, *shape), dtype=dt, device=device)
                     for name, (shape, dt) in self.spec.items()}
        self._rows = {name: _wide(buf, capacity) for name, buf in self.data.items()}

    def check_batch(self, batch) -> tuple[int, dict[str, torch.Tensor]]:
        """Validate a batch of rows; return (n, tensors on the buffer's device, in spec dtypes)."""
        if not isinstance(batch, Mapping):
            raise TypeError(f"batch: expected a mapping field name -> tensor, got {type(batch).__name__}")
        missing = [k for k in self.spec if k not in batch]
        unknown = [k for k in batch if k not in self.spec]
        if missing or unknown:
            parts = ([f"missing field(s) {missing}"] if missing else []) + \
                    ([f"unknown field(s) {unknown}"] if unknown else [])
            raise ValueError(f"batch: {'; '.join(parts)}; expected exactly {list(self.spec)}")
        n = None
        out = {}
        for name, (shape, dt) in self.spec.items():
            t = as_tensor(batch[name], f"batch[{name!r}]")
            if t.dim() != len(shape) + 1 or tuple(t.shape[1:]) != shape:
                raise ValueError(f"batch[{name!r}]: expected shape [B, {', '.join(map(str, shape))}]"
                                 .replace(", ]", "]") + f", got {tuple(t.shape)}")
            if not torch.can_cast(t.dtype, dt):
                raise TypeError(f"batch[{name!r}]: expected dtype {dt} (or one that casts to it "
                                f"safely), got {t.dtype}")
            if n is None:
                n = t.shape[0]
            elif t.shape[0] != n:
                raise ValueError(f"batch[{name!r}]: batch size {t.shape[0]} differs from the other "
                                 f"fields' {n}")
            out[name] = t
        if n < 1:
            raise ValueError(f"batch: expected at least one row, got batch size {n}")
        return n, out

    def write(self, keys: torch.Tensor, tensors: dict[str, torch.Tensor], first_key: int | None = None) -> None:
        """Rows i at slot keys[i] % capacity. On the CPU, where the host's count of rows is
        the device's, ``first_key`` turns the scatter into at most two slice copies; on
        CUDA the slots come from the device keys (so a captured graph writes new slots on
        every replay)."""
        n = keys.shape[0]
        if n > self.capacity:  # only the last C rows survive
            keys = keys[n - self.capacity:]
            tensors = {k: v[n - self.capacity:] for k, v in tensors.items()}
            if first_key is not None:
                first_key += n - self.capacity
            n = self.capacity
        if first_key is not None and self.device.type == "cpu":
            a = first_key % self.capacity
            n1 = min(n, self.capacity - a)
            for name, buf in self.data.items():
                t = tensors[name]
                buf[a:a + n1].copy_(t[:n1])
                if n1 < n:
                    buf[:n - n1].copy_(t[n1:])
            return
        slots = torch.remainder(keys, self.capacity)
        for name, buf in self.data.items():
            t = tensors[name].to(device=self.device, dtype=buf.dtype, non_blocking=True).contiguous()
            self._rows[name].index_copy_(0, slots, _wide(t, t.shape[0]))

    def gather(self, slots: torch.Tensor) -> dict[str, torch.Tensor]:
        B = slots.shape[0]
        out = {}
        for name, buf in self.data.items():
            wide = self._rows[name]
            if wide.shape[1] * wide.element_size() <= 64:  # small rows: the views would cost more
                out[name] = buf.index_select(0, slots)
                continue
            rows = torch.index_select(wide, 0, slots, out=self._rows_out(B, wide))
            out[name] = rows.view(torch.uint8).view(buf.dtype).view(B, *buf.shape[1:])
        return out

    def _rows_out(self, B: int, wide: torch.Tensor) -> torch.Tensor:
        """The output of a gather. A large one on the CPU is allocated by numpy, which asks
        the kernel for huge pages (madvise): torch's allocator does not, and page faults then
        cost more than the copy (a 115 MB gather: 71 -> 19 ms)."""
        if self.device.type == "cpu" and B * wide.shape[1] * wide.element_size() >= 1 << 22:
            return torch.from_numpy(np.empty((B, wide.shape[1]), dtype=_NP_INT[wide.dtype]))
        return torch.empty((B, wide.shape[1]), dtype=wide.dtype, device=wide.device)

"""The ring of named fields: one preallocated tensor [capacity, *shape] per field.

A row lives at slot ``key % capacity`` until overwritten (``gpu_replay.keys``). All fields
are views into one device allocation (each field 64-byte aligned), so ``nbytes`` is one
number and an input that aliases stored rows is found with one range check.

Writes take rows already checked (``_checks.check_rows``): every field is first *prepared*
(converted to the field's dtype, on the device, contiguous, not aliasing the storage), and
only then is anything written, so a failure in a conversion leaves every row intact. On the
CPU the host knows the next key, and a write is at most two slice copies per field; on
other devices the slots come from the device key counter (a CUDA graph replay writes new
slots each time).
"""
from __future__ import annotations

import numpy as np
import torch

from ._checks import normalize_spec, to_device

_ALIGN = 64
_NP_INT = {torch.int64: np.int64, torch.int32: np.int32, torch.int16: np.int16, torch.uint8: np.uint8}


def wide_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """The same bytes as [rows, m] of the widest integer type that divides a row: row copies
    are bitwise, and index_copy_/index_select move whole words (7x faster than byte by byte
    for uint8 frames on a CPU)."""
    raw = t.reshape(rows, -1).view(torch.uint8)
    for dt in (torch.int64, torch.int32, torch.int16):
        if raw.shape[1] % dt.itemsize == 0:
            return raw.view(dt)
    return raw


class Storage:
    """One tensor [capacity, *shape] per field of ``spec``, on ``device``.

    - ``write(rows, first_key, counter)``: rows (prepared by ``prepare``) at the slots of keys
      first_key.. (CPU) or counter.added.. (device); a batch longer than the capacity keeps
      its last ``capacity`` rows.
    - ``gather(slots)``: {field: rows [B, *shape]}.
    - ``nbytes``: device bytes held.
    """

    def __init__(self, capacity: int, spec, device: torch.device):
        self.capacity = capacity
        self.spec = normalize_spec(spec)
        self.device = device
        offsets, total = {}, 0
        for name, (shape, dt) in self.spec.items():
            offsets[name] = total
            nbytes = capacity * int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            total += -(-nbytes // _ALIGN) * _ALIGN
        self.block = torch.zeros(max(total, 1), dtype=torch.uint8, device=device)
        self.data = {}
        for name, (shape, dt) in self.spec.items():
            nbytes = capacity * int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            self.data[name] = self.block[offsets[name]:offsets[name] + nbytes].view(dt).view(capacity, *shape)
        self._wide = {name: wide_rows(buf, capacity) for name, buf in self.data.items()}
        self._lo = self.block.data_ptr()
        self._hi = self._lo + self.block.numel()
        self.cpu = device.type == "cpu"
        # numpy views of the fields (the CPU writes small rows with numpy: ~1 µs a field)
        self.np = {name: buf.numpy() for name, buf in self.data.items() if buf.dtype in _NP_DTYPES} if self.cpu else {}
        self._block_np = self.block.numpy() if self.cpu else None

    @property
    def nbytes(self) -> int:
        return self.block.numel()

    # ------------------------------------------------------------------ writing
    def aliases(self, t) -> bool:
        """Whether ``t`` (tensor or array) may share memory with the stored rows."""
        if isinstance(t, np.ndarray):
            return self.cpu and np.may_share_memory(t, self._block_np)
        if t.device != self.device or t.numel() == 0:
            return False
        lo = t.data_ptr()
        span = sum((n - 1) * st for n, st in zip(t.shape, t.stride()) if n > 1) + 1
        return lo < self._hi and self._lo < lo + span * t.element_size()

    def prepare(self, rows: dict) -> dict:
        """Every field converted (dtype, device, contiguous, detached) and copied away from the
        storage if it aliases it: nothing is written yet, so a failure here changes nothing.
        On the CPU a numpy array stays an array (numpy casts it as it writes)."""
        out = {}
        for name, (shape, dt) in self.spec.items():
            t = rows[name]
            if isinstance(t, np.ndarray):
                if self.cpu and name in self.np:
                    out[name] = t.copy() if self.aliases(t) else t
                    continue
                t = torch.from_numpy(np.ascontiguousarray(t))
            try:
                t = to_device(t, self.device, dt)
            except Exception as e:  # noqa: BLE001 - any conversion failure, before a write
                raise ValueError(f"batch[{name!r}]: expected a tensor that converts to {dt} on {self.device}, "
                                 f"got one that does not ({type(e).__name__}: {e})") from e
            if self.aliases(t):
                t = t.clone()
            out[name] = t
        return out

    def write(self, rows: dict, n: int, first_key: int | None = None, counter=None) -> None:
        """Rows i at the slots of keys first_key + i (CPU; ``first_key`` read from the host
        counter) or counter.added + i (any device, read on the device)."""
        C = self.capacity
        skip = max(n - C, 0)  # only the last C rows survive
        m = n - skip
        if self.cpu:
            a = (first_key + skip) % C
            n1 = min(m, C - a)
            for name, t in rows.items():
                dst = self.np[name] if isinstance(t, np.ndarray) else self.data[name]
                src = t[skip:] if skip else t
                if n1 == m:
                    dst[a:a + m] = src
                else:
                    dst[a:a + n1] = src[:n1]
                    dst[:m - n1] = src[n1:]
            return
        slots = torch.remainder(counter.t[0] + torch.arange(skip, n, device=self.device), C)
        for name, t in rows.items():
            src = t[skip:] if skip else t
            self._wide[name].index_copy_(0, slots, wide_rows(src, m))

    # ------------------------------------------------------------------ reading
    def gather(self, slots: torch.Tensor) -> dict[str, torch.Tensor]:
        B = slots.shape[0]
        out = {}
        for name, buf in self.data.items():
            wide = self._wide[name]
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
        if self.cpu and B * wide.shape[1] * wide.element_size() >= 1 << 22:
            return torch.from_numpy(np.empty((B, wide.shape[1]), dtype=_NP_INT[wide.dtype]))
        return torch.empty((B, wide.shape[1]), dtype=wide.dtype, device=wide.device)

    # ------------------------------------------------------------------ lifecycle
    def clear(self) -> None:
        self.block.zero_()

    def rows_state(self, n: int) -> dict[str, torch.Tensor]:
        """The first n slots of every field, copied to the CPU."""
        return {k: v[:n].detach().to("cpu", copy=True) for k, v in self.data.items()}

    def load_rows(self, rows: dict[str, torch.Tensor], n: int) -> None:
        for k, buf in self.data.items():
            buf[:n].copy_(rows[k])
            buf[n:].zero_()


_NP_OF = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64), torch.float16: np.dtype(np.float16),
          torch.int64: np.dtype(np.int64), torch.int32: np.dtype(np.int32), torch.int16: np.dtype(np.int16),
          torch.int8: np.dtype(np.int8), torch.uint8: np.dtype(np.uint8), torch.bool: np.dtype(np.bool_),
          torch.complex64: np.dtype(np.complex64), torch.complex128: np.dtype(np.complex128)}
_NP_DTYPES = frozenset(_NP_OF)

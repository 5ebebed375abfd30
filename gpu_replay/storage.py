"""The ring of named fields: one preallocated tensor [capacity, *shape] per field.

A row lives at slot ``key % capacity`` until overwritten (``gpu_replay.keys``). All fields
are views into one device allocation (each field 64-byte aligned), so ``nbytes`` is one
number and an input that aliases stored rows is found with one range check.

Writes take rows already checked (``_checks.check_rows``): every field is first *prepared*
(converted to the field's dtype, on the device, contiguous, not aliasing the storage), and
only then is anything written, so a failure in a conversion leaves every row intact.

Three paths, by backend (``path``):

- ``"host"`` (a CPU buffer, numba or torch backend): the host knows the next key; a write is
  at most two numpy slice copies per field, a gather one ``numpy.take`` per small field (3x
  faster than a fancy index for a few rows) and one ``index_select`` per large one;
- ``"triton"`` (CUDA; on the CPU under the Triton interpreter): host inputs staged in one
  pinned buffer and copied once (``staging``), then one launch writes every field's rows at
  the slots of the device key counter (``kernels/rows.py``); one launch gathers every field;
- ``"torch"`` (any other device): the same with one index op per field.

On the device paths the slots come from the device key counter, so a CUDA graph replay
writes new slots each time.
"""
from __future__ import annotations

import numpy as np
import torch

from . import staging
from ._checks import normalize_spec, to_device

_ALIGN = 64
_NP_INT = {torch.int64: np.int64, torch.int32: np.int32, torch.int16: np.int16, torch.uint8: np.uint8}


def wide_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """The same bytes as [rows, m] of the widest integer type that divides a row: row copies
    are bitwise, and index ops move whole words (7x faster than byte by byte for uint8 frames
    on a CPU). ``t`` must be contiguous."""
    raw = t.reshape(rows, -1)
    if raw.stride(-1) != 1 or (rows > 1 and raw.stride(0) != raw.shape[1]):
        # a contiguous tensor may carry any stride on a size-1 dim (e.g. one env's row): restate it
        raw = raw.as_strided(raw.shape, (raw.shape[1], 1))
    raw = raw.view(torch.uint8)
    for dt in (torch.int64, torch.int32, torch.int16):
        if raw.shape[1] % dt.itemsize == 0:
            return raw.view(dt)
    return raw


class Storage:
    """One tensor [capacity, *shape] per field of ``spec``, on ``device``.

    - ``prepare(rows)`` then ``write(rows, n, counter)``: rows at the slots of the next n keys
      (a batch longer than the capacity keeps its last ``capacity`` rows);
    - ``gather(slots)``: {field: rows [B, *shape]};
    - ``nbytes``: device bytes held.
    """

    def __init__(self, capacity: int, spec, device: torch.device, backend: str = "torch"):
        self.capacity = capacity
        self.spec = normalize_spec(spec)
        self.device = device
        self.path = "triton" if backend == "triton" else "host" if device.type == "cpu" else "torch"
        offsets, total = {}, 0
        for name, (shape, dt) in self.spec.items():
            offsets[name] = total
            nbytes = capacity * int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            total += -(-nbytes // _ALIGN) * _ALIGN
        with torch.inference_mode(False):
            self.block = torch.zeros(max(total, 1), dtype=torch.uint8, device=device)
        self.data = {}
        for name, (shape, dt) in self.spec.items():
            nbytes = capacity * int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            self.data[name] = self.block[offsets[name]:offsets[name] + nbytes].view(dt).view(capacity, *shape)
        self._wide = {name: wide_rows(buf, capacity) for name, buf in self.data.items()}
        self._wide_list = list(self._wide.values())
        self._lo = self.block.data_ptr()
        self._hi = self._lo + self.block.numel()
        host = self.path == "host"
        # numpy views of the fields (the CPU writes small rows with numpy: ~1 µs a field)
        self.np = {name: buf.numpy() for name, buf in self.data.items() if buf.dtype in _NP_DTYPES} if host else {}
        self._block_np = self.block.numpy() if device.type == "cpu" else None
        # small rows on the CPU are gathered by numpy (take: ~0.5 µs a field)
        self._np_small = {name: a for name, a in self.np.items() if a[:1].nbytes <= 256}
        # the CPU fast path: every field has a numpy dtype (else None: the checked path runs)
        self._host = {name: (shape, _NP_OF[dt]) for name, (shape, dt) in self.spec.items()} \
            if host and len(self.np) == len(self.spec) else None

    @property
    def nbytes(self) -> int:
        return self.block.numel()

    # ------------------------------------------------------------------ writing
    def host_rows(self, batch):
        """The CPU fast path of ``check_rows`` + ``prepare``: (n, {field: numpy array}) when every
        field is a numpy array or a plain CPU tensor of exactly the field's dtype and shape that
        does not alias the storage; None otherwise (then the checked path runs, with its
        conversions and messages). Reads metadata only."""
        fields = self._host
        if fields is None or type(batch) is not dict or len(batch) != len(fields):
            return None
        n = -1
        out = {}
        block = self._block_np
        for name, (shape, npdt) in fields.items():
            v = batch.get(name)
            if type(v) is not np.ndarray:
                if type(v) is not torch.Tensor or v.device.type != "cpu" or v.requires_grad or v.is_sparse:
                    return None
                v = v.numpy()
            if v.dtype != npdt or v.shape[1:] != shape or v.ndim != len(shape) + 1 or np.may_share_memory(v, block):
                return None
            if n != v.shape[0]:
                if n >= 0:
                    return None
                n = v.shape[0]
            out[name] = v
        return (n, out) if n > 0 else None

    def aliases(self, t) -> bool:
        """Whether ``t`` (tensor or array) may share memory with the stored rows."""
        if isinstance(t, np.ndarray):
            return self._block_np is not None and np.may_share_memory(t, self._block_np)
        if t.device != self.device or t.numel() == 0:
            return False
        lo = t.data_ptr()
        span = sum((n - 1) * st for n, st in zip(t.shape, t.stride()) if n > 1) + 1
        return lo < self._hi and self._lo < lo + span * t.element_size()

    def prepare(self, rows: dict) -> dict:
        """Every field converted (dtype, device, contiguous, detached) and copied away from the
        storage if it aliases it: nothing is written yet, so a failure here changes nothing.
        On the host path a numpy array stays an array (numpy casts it as it writes); on the
        Triton path every host input is staged through one pinned buffer and one copy."""
        names = list(self.spec)
        if self.path == "triton":
            try:
                ts = staging.to_device([rows[k] for k in names], [self.spec[k][1] for k in names], self.device, True)
            except Exception as e:  # noqa: BLE001 - any conversion failure, before a write
                raise ValueError(f"batch: expected fields that convert to the spec's dtypes on {self.device}, got "
                                 f"one that does not ({type(e).__name__}: {e})") from e
            return {k: (t.clone() if self.aliases(t) else t) for k, t in zip(names, ts)}
        out = {}
        for name in names:
            dt = self.spec[name][1]
            t = rows[name]
            if isinstance(t, np.ndarray):
                if name in self.np:
                    out[name] = t.copy() if self.aliases(t) else t
                    continue
                t = torch.from_numpy(np.ascontiguousarray(t))
            try:
                t = to_device(t, self.device, dt)
            except Exception as e:  # noqa: BLE001 - any conversion failure, before a write
                raise ValueError(f"batch[{name!r}]: expected a tensor that converts to {dt} on {self.device}, "
                                 f"got one that does not ({type(e).__name__}: {e})") from e
            out[name] = t.clone() if self.aliases(t) else t
        return out

    def write(self, rows: dict, n: int, counter, keys: bool = False) -> torch.Tensor | None:
        """Row i at the slot of key A + i, A = the counter's ``added`` (read on the host for the
        host path, on the device otherwise). Does not advance the counter. With ``keys`` on
        the Triton path, returns the n keys (written by the same launch); else None."""
        C = self.capacity
        skip = max(n - C, 0)  # only the last C rows survive
        m = n - skip
        if self.path == "host":
            a = (int(counter.np[0]) + skip) % C
            n1 = min(m, C - a)
            for name, t in rows.items():
                dst = self.np[name] if isinstance(t, np.ndarray) else self.data[name]
                src = t[skip:] if skip else t
                if n1 == m:
                    dst[a:a + m] = src
                else:
                    dst[a:a + n1] = src[:n1]
                    dst[:m - n1] = src[n1:]
            return None
        srcs = [wide_rows(rows[k], n) for k in self.spec]
        if self.path == "triton":
            from .kernels.rows import scatter_ring_triton
            out = torch.empty(n, dtype=torch.int64, device=self.device) if keys else None
            scatter_ring_triton(self._wide_list, srcs, counter, n, C, out)
            return out
        from .kernels.rows import ring_rows, scatter_torch
        scatter_torch(self._wide_list, [s[skip:] for s in srcs] if skip else srcs, ring_rows(counter, n, C))
        return None

    # ------------------------------------------------------------------ reading
    def gather(self, slots) -> dict[str, torch.Tensor]:
        """{field: the rows at ``slots``} (a tensor on the device; a numpy array on the host path)."""
        if self.path == "host":
            idx = slots if isinstance(slots, np.ndarray) else slots.numpy()
            if len(self._np_small) == len(self.data):  # every field small: numpy alone
                return {name: torch.from_numpy(a.take(idx, axis=0)) for name, a in self._np_small.items()}
            return self._gather_host(idx)
        B = slots.shape[0]
        outs = [torch.empty((B, w.shape[1]), dtype=w.dtype, device=self.device) for w in self._wide_list]
        if self.path == "triton":
            from .kernels.rows import gather_triton
            gather_triton(self._wide_list, slots, outs)
        else:
            from .kernels.rows import gather_torch
            gather_torch(self._wide_list, slots, outs)
        return self._fields(outs, B)

    def gather_uniform(self, r: torch.Tensor, counter):
        """The Triton path's uniform sample in one launch: slots drawn from ``r`` and the live
        count on the device, their keys, and the rows. Returns (fields, slots, keys)."""
        from .kernels.rows import gather_uniform_triton
        B = r.shape[0]
        outs = [torch.empty((B, w.shape[1]), dtype=w.dtype, device=self.device) for w in self._wide_list]
        slots = torch.empty(B, dtype=torch.int64, device=self.device)
        keys = torch.empty(B, dtype=torch.int64, device=self.device)
        gather_uniform_triton(self._wide_list, r, counter, self.capacity, outs, slots, keys)
        return self._fields(outs, B), slots, keys

    def _fields(self, outs, B: int) -> dict[str, torch.Tensor]:
        return {name: o.view(torch.uint8).view(buf.dtype).view(B, *buf.shape[1:])
                for (name, buf), o in zip(self.data.items(), outs)}

    def _gather_host(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        out = {}
        slots = torch.from_numpy(idx)
        for name, buf in self.data.items():
            if name in self._np_small:
                out[name] = torch.from_numpy(self._np_small[name].take(idx, axis=0))
                continue
            wide = self._wide[name]
            rows = torch.index_select(wide, 0, slots, out=self._rows_out(idx.shape[0], wide))
            out[name] = rows.view(torch.uint8).view(buf.dtype).view(idx.shape[0], *buf.shape[1:])
        return out

    def _rows_out(self, B: int, wide: torch.Tensor) -> torch.Tensor:
        """The output of a large host gather, allocated by numpy, which asks the kernel for
        huge pages (madvise): torch's allocator does not, and page faults then cost more than
        the copy (a 115 MB gather: 71 -> 19 ms)."""
        if B * wide.shape[1] * wide.element_size() >= 1 << 22:
            return torch.from_numpy(np.empty((B, wide.shape[1]), dtype=_NP_INT[wide.dtype]))
        return torch.empty((B, wide.shape[1]), dtype=wide.dtype)

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


_NP_OF = staging.NP_OF
_NP_DTYPES = frozenset(_NP_OF)

"""The key counter: which keys a buffer has handed out, and which are still alive.

Every stored row gets an int64 key when written, monotonically increasing; its slot is
``key % capacity``. The counter is two device ints, ``[added, floor]``:

- ``added``: keys handed out so far (the next row gets key ``added``);
- ``floor``: keys below it are dead for good (rows cleared, or rolled back by a ``load``).

A key is *live* while ``max(added - capacity, floor) <= key < added``; any other key is
stale, and an update with it is dropped on the device. Keys are never reused in a buffer's
life: ``clear`` raises the floor to the next multiple of the capacity at or above ``added``
(so the next row lands in slot 0, and every key handed out before is dead), and ``load``
shifts a checkpoint's keys by a multiple of the capacity when this buffer has already handed
out keys the checkpoint would reuse (slots are unchanged by such a shift).

The device ops (``insert``) advance ``added`` on the device, so a CUDA graph replay advances
it too. The host reads it for free on the CPU (a numpy view of the same memory); on CUDA
``added()``/``live()`` read the device (a sync), and nothing that must be right relies on a
host copy.
"""
from __future__ import annotations

import torch


class KeyCounter:
    """``t``: int64 [added, floor] on the device (what kernels read and advance)."""

    def __init__(self, capacity: int, device: torch.device, host: bool | None = None):
        """``host``: the host may read the counter for free (a CPU buffer off the Triton path;
        the default is ``device.type == "cpu"``). Otherwise every read is a device read."""
        self.capacity = capacity
        with torch.inference_mode(False):
            self.t = torch.zeros(2, dtype=torch.int64, device=device)
        host = device.type == "cpu" if host is None else host
        self.np = self.t.numpy() if host else None
        self.seen_rows = False  # an eager call added rows (CUDA: lets sample skip its empty check)

    def read(self) -> tuple[int, int]:
        """(added, floor): free on the CPU, a device read (sync) elsewhere."""
        if self.np is not None:
            return int(self.np[0]), int(self.np[1])
        a, f = self.t.tolist()
        return a, f

    def added(self) -> int:
        return int(self.np[0]) if self.np is not None else self.read()[0]

    def live(self) -> int:
        """Rows stored: min(added - floor, capacity)."""
        a, f = self.read()
        return min(a - f, self.capacity)

    def maybe_empty(self) -> bool:
        """False when rows are certainly stored (no sync); else reads the device."""
        if self.np is not None:
            return self.np[0] == self.np[1]
        return not self.seen_rows and self.live() == 0

    def clear(self) -> None:
        """Every key handed out so far becomes dead; the next key is a multiple of the
        capacity (its row lands in slot 0). On the device, no sync."""
        C = self.capacity
        nxt = torch.div(self.t[0] + (C - 1), C, rounding_mode="floor") * C
        self.t.copy_(nxt.expand(2))
        self.seen_rows = False

    def set(self, added: int, floor: int) -> None:
        self.t.copy_(torch.tensor([added, floor], dtype=torch.int64))
        self.seen_rows = added > floor

    def shift_for(self, added: int, floor: int) -> int:
        """The multiple of the capacity to add to a checkpoint's keys (added, floor) so that no
        key this counter handed out becomes live again with another row: 0 when every such key
        is below the checkpoint's live window, else the least shift that puts the window above."""
        mine = self.added()
        if mine == 0 or mine <= max(added - self.capacity, floor):
            return 0
        C = self.capacity
        need = mine - max(added - C, floor)  # the window's start must rise by at least this
        return -(-need // C) * C


def keys_from_slots(slots: torch.Tensor, added: torch.Tensor, capacity: int) -> torch.Tensor:
    """The newest key k < added with k % capacity == slot (-1 for a slot never written)."""
    a1 = added - 1
    return torch.where(slots <= a1, a1 - torch.remainder(a1 - slots, capacity), -1)

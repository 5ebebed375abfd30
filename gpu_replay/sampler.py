"""The sampling parts of a buffer: which rows a batch takes, and their IS weights.

- ``UniformSampler``: every stored row equally likely (with replacement); with a validity
  mask (rows added with ``valid=False``, e.g. gymnasium's next-step autoreset steps), only
  the valid ones: then a sum tree with every valid row at priority 1 does the drawing.
- ``PrioritizedSampler``: P(i) = p_i / sum p over a ``SumTree``, IS weights with either
  normalization (the formula lives in one place: ``kernels/sample.py``).

Both own the buffer's key counter (the prioritized one through its tree) and return a
``Sample(slots, keys, priorities, weights)``.
"""
from __future__ import annotations

import numpy as np
import torch

from ._backend import resolve_backend
from ._checks import check_choice, check_float, check_int, check_keys
from .keys import KeyCounter, keys_from_slots
from .sumtree import Sample, SumTree, check_beta

__all__ = ["Sample", "UniformSampler", "PrioritizedSampler", "linear_beta"]


def linear_beta(step: int, total_steps: int, beta0: float = 0.4, beta1: float = 1.0) -> float:
    """beta annealed linearly from beta0 to beta1 over total_steps, then held (never past beta1).

    >>> linear_beta(0, 100), linear_beta(50, 100), linear_beta(10_000, 100)
    (0.4, 0.7, 1.0)
    """
    total_steps = check_int(total_steps, "total_steps", 1)
    beta0 = check_float(beta0, "beta0", 0.0, 1.0)
    beta1 = check_float(beta1, "beta1", beta0, 1.0)
    frac = min(max(step, 0) / total_steps, 1.0)
    return round(beta0 + frac * (beta1 - beta0), 12)


class UniformSampler:
    """Uniform replay: the key counter, and a validity tree once a mask is used.

    ``masked=True`` makes the validity tree up front (a buffer whose n-step stage emits
    masks); otherwise it is made by the first ``add`` with a mask, in O(capacity), with every
    row stored so far valid.
    """

    def __init__(self, capacity: int, device: torch.device, backend: str = "auto", masked: bool = False):
        self.capacity = capacity
        self.device = device
        self.backend = resolve_backend(backend, device)
        self.counter = KeyCounter(capacity, device, device.type == "cpu" and self.backend != "triton")
        self.lock = None  # the owning buffer's lock, given to a validity tree made later
        self.mask_tree: SumTree | None = None
        if masked:
            self._make_mask_tree()

    def _make_mask_tree(self) -> None:
        with torch.inference_mode(False):  # a tree made inside inference_mode must still be writable
            tree = SumTree(self.capacity, alpha=0.0, device=self.device, backend=self.backend, counter=self.counter)
            if self.lock is not None:
                tree.lock = self.lock
            C = self.capacity
            A, F = self.counter.t[0], self.counter.t[1]
            keys = keys_from_slots(torch.arange(C, device=self.device), A, C)
            tree.leaves.copy_((keys >= torch.maximum(A - C, F)).to(torch.float64))  # rows so far: valid
            from .kernels.refresh import rebuild_torch  # (loaded by the tree's backend already)
            rebuild_torch(tree.state)
        self.mask_tree = tree

    def __len__(self) -> int:
        return self.counter.live()

    def trees(self) -> list:
        """The sum trees this sampler owns: the validity tree, once there is one."""
        return [] if self.mask_tree is None else [self.mask_tree]

    def wants_keys(self, valid) -> bool:
        """Whether the storage's write should also write the keys (a plain uniform add)."""
        return valid is None and self.mask_tree is None

    def add(self, n: int, valid: torch.Tensor | None, keys: torch.Tensor | None = None) -> torch.Tensor:
        """Hand out n keys (rows ``valid`` False are never sampled; ``valid`` on the device).
        ``keys``: the keys the storage's write already made, if it did."""
        if valid is not None and self.mask_tree is None:
            self._make_mask_tree()
        if self.mask_tree is not None:
            return self.mask_tree._add(n, valid)
        c = self.counter
        c.seen_rows = True
        if c.np is not None:
            a = int(c.np[0])
            c.np[0] = a + n
            return torch.from_numpy(np.arange(a, a + n, dtype=np.int64)) if keys is None else keys
        if keys is None:
            keys = c.t[0] + torch.arange(n, dtype=torch.int64, device=self.device)
        c.t[:1].add_(n)
        return keys

    def check_nonempty(self) -> None:
        if self.counter.maybe_empty():
            raise ValueError("sample: expected a buffer with rows, got an empty one; add rows first")

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Sample:
        if self.mask_tree is not None:
            s = self.mask_tree._sample(batch_size, 0.0, generator, None)
            return Sample(s.slots, s.keys, None, None)
        c = self.counter
        self.check_nonempty()
        if c.np is not None:  # the CPU knows the row count: an integer draw, keys by numpy
            slots = torch.randint(0, c.live(), (batch_size,), generator=generator).numpy()
            a1 = int(c.np[0]) - 1
            keys = np.where(slots <= a1, a1 - (a1 - slots) % self.capacity, -1)
            return Sample(slots, torch.from_numpy(keys), None, None)  # (numpy slots: the host storage's)
        else:  # the row count stays on the device: floor(r * live)
            live = (c.t[0] - c.t[1]).clamp_max(self.capacity)
            r = torch.rand(batch_size, generator=generator, dtype=torch.float64, device=self.device)
            slots = (r * live).to(torch.int64)
        return Sample(slots, keys_from_slots(slots, c.t[0], self.capacity), None, None)

    def clear(self) -> None:
        self.counter.clear()
        if self.mask_tree is not None:
            self.mask_tree.clear()  # (clears the shared counter too: idempotent)

    def state_dict(self) -> dict:
        added, floor = self.counter.read()
        return {"added": added, "floor": floor,
                "mask_tree": None if self.mask_tree is None else self.mask_tree.state_dict()}

    def prepare_load(self, r, shift: int):
        added = r.int("added", 0, 2 ** 62)
        floor = r.int("floor", 0, added)
        tree_sd = r.get("mask_tree")
        tree_commit = None
        if tree_sd is not None:
            tree = self.mask_tree
            if tree is None:
                tree = SumTree(self.capacity, alpha=0.0, device=self.device, backend=self.backend,
                               counter=self.counter)
            tree_commit = tree.prepare_load(tree_sd, r.sub("mask_tree"), shift)

        def commit():
            if tree_commit is None:
                self.mask_tree = None
            else:
                tree_commit()
                if self.lock is not None:
                    tree.lock = self.lock
                self.mask_tree = tree
                tree.counter = self.counter
            self.counter.set(added + shift, floor + shift)
        return commit


class PrioritizedSampler:
    """Prioritized replay over a ``SumTree`` (which owns the key counter)."""

    def __init__(self, capacity: int, device: torch.device, alpha: float = 0.6, eps: float = 1e-6,
                 fanout: int = 16, backend: str = "auto", normalize: str = "global", strict: bool = False):
        self.normalize = check_choice(normalize, "normalize", ("global", "batch"))
        self.strict = bool(strict)
        self.tree = SumTree(capacity, fanout, alpha, eps, device, backend)
        self.counter = self.tree.counter
        self.device = device

    def __len__(self) -> int:
        return self.counter.live()

    def trees(self) -> list:
        return [self.tree]

    def wants_keys(self, valid) -> bool:
        return False  # the tree's insert makes them

    def add(self, n: int, valid: torch.Tensor | None, keys: torch.Tensor | None = None) -> torch.Tensor:
        return self.tree._add(n, valid)

    def sample(self, batch_size: int, generator: torch.Generator | None = None, beta=0.4) -> Sample:
        return self.tree._sample(batch_size, check_beta(beta, self.device), generator, self.normalize)

    def update(self, keys, td) -> None:
        """Checked keys and TD errors (``_checks.check_keys``), or raw ones the tree's fast
        path takes as they are (see ``update_priorities``)."""
        tree = self.tree
        if self.strict or tree._update_fast is None or not tree._update_fast(keys, td):
            keys, td = check_keys(keys, td, self.device)
            tree._update(keys, td, self.strict)

    def clear(self) -> None:
        self.tree.clear()

    def state_dict(self) -> dict:
        return {"tree": self.tree.state_dict()}

    def prepare_load(self, r, shift: int):
        return self.tree.prepare_load(None, r.sub("tree"), shift)

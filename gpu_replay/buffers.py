"""The replay buffers: uniform and prioritized, both device-resident rings of named fields."""
from __future__ import annotations

import torch

from ._storage import Storage, as_device, check_float, check_int, check_keys, check_mask
from ._tree import DEFAULT_FANOUT, SumTree


class Batch:
    """A sampled batch: ``batch["obs"]`` gives a field, plus ``keys`` (int64, for
    ``update_priorities``), ``weights`` (float32 IS weights, None for uniform replay) and
    ``priorities`` (float64 p_i, None for uniform replay). All on the buffer's device."""

    __slots__ = ("fields", "keys", "weights", "priorities")

    def __init__(self, fields: dict[str, torch.Tensor], keys: torch.Tensor,
                 weights: torch.Tensor | None = None, priorities: torch.Tensor | None = None):
        self.fields = fields
        self.keys = keys
        self.weights = weights
        self.priorities = priorities

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self.fields[name]
        except KeyError:
            raise KeyError(f"no field {name!r}; fields are {list(self.fields)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self.fields

    def __len__(self) -> int:
        return self.keys.shape[0]

    def __repr__(self) -> str:
        return f"Batch(size={len(self)}, fields={list(self.fields)})"


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


class ReplayBuffer:
    """Uniform replay over a device-resident ring of named fields.

    ``spec`` maps field names to (shape, dtype), e.g.
    ``{"obs": ((4, 84, 84), torch.uint8), "action": ((), torch.int64), "reward": ((), torch.float32)}``.
    Each field is one preallocated tensor [capacity, *shape] on ``device``.

    - ``add(batch)``: a mapping of tensors or numpy arrays with a leading batch dim (any
      device; dtypes that cast safely are converted). Returns int64 keys, monotonic; the row
      lives at slot ``key % capacity`` until overwritten. A batch longer than the capacity
      keeps its last ``capacity`` rows, as a ring would.
    - ``sample(batch_size)``: rows drawn uniformly with replacement from the stored ones.

    Example::

        >>> import torch
        >>> from gpu_replay import ReplayBuffer
        >>> rb = ReplayBuffer(100, {"obs": ((3,), torch.float32), "action": ((), torch.int64)})
        >>> rb.add({"obs": torch.zeros(5, 3), "action": torch.arange(5)}).tolist()
        [0, 1, 2, 3, 4]
        >>> len(rb), rb.sample(2)["obs"].shape
        (5, torch.Size([2, 3]))
    """

    def __init__(self, capacity: int, spec, device=None, generator: torch.Generator | None = None):
        capacity = check_int(capacity, "capacity", 1, 2 ** 40)
        self.device = as_device(device)
        self.storage = Storage(capacity, spec, self.device)
        self.generator = generator
        self.added = torch.zeros((), dtype=torch.int64, device=self.device)
        self.num_added = 0

    @property
    def capacity(self) -> int:
        return self.storage.capacity

    @property
    def spec(self):
        return self.storage.spec

    def __len__(self) -> int:
        return min(self.num_added, self.capacity)

    def add(self, batch) -> torch.Tensor:
        n, tensors = self.storage.check_batch(batch)
        keys = self.added + torch.arange(n, dtype=torch.int64, device=self.device)
        self.storage.write(keys, tensors)
        self.added.add_(n)
        self.num_added += n
        return keys

    def sample(self, batch_size: int) -> Batch:
        batch_size = check_int(batch_size, "batch_size", 1, 2 ** 31 - 1)
        if len(self) == 0:
            raise ValueError("sample: the buffer is empty; add rows first")
        slots = torch.randint(0, len(self), (batch_size,), generator=self.generator, device=self.device)
        a1 = self.added - 1
        keys = a1 - torch.remainder(a1 - slots, self.capacity)
        return Batch(self.storage.gather(slots), keys)


class PrioritizedReplayBuffer(ReplayBuffer):
    """Prioritized experience replay (Schaul et al. 2016) on a device-resident K-ary sum tree.

    - ``add(batch, valid=None)``: as ``ReplayBuffer.add``; every new row enters with the
      running max priority (m ** alpha, m = max |d| + eps seen, 1.0 at first). Rows whose
      ``valid`` is False are stored with priority 0 and never sampled.
    - ``sample(batch_size, beta)``: P(i) = p_i / sum p, stratified; returns a ``Batch`` with
      the fields, ``keys``, ``weights`` (float32 IS weights (N P(i)) ** -beta, divided by
      their global max, i.e. (p_i / p_min) ** -beta; ``normalize="batch"`` divides by the
      batch max instead) and ``priorities``.
    - ``update_priorities(keys, td_errors)``: p = (|d| + eps) ** alpha. A key whose row was
      overwritten since it was sampled is dropped (never applied to the newer row); NaN and
      inf TD errors are replaced by the running max and counted (``strict=True`` raises and
      changes nothing); a key repeated in one call: the last write wins. Negative TD errors
      are ordinary: |d| is used.

    On CUDA no call waits for the device (no ``.item()``, no data-dependent shapes); the
    Triton kernels run with ``backend="auto"``/``"triton"``, the pure-torch twins with
    ``"torch"`` (and on every non-CUDA device). Results of the two are bit-identical.

    Example::

        >>> import torch
        >>> from gpu_replay import PrioritizedReplayBuffer
        >>> spec = {"obs": ((4,), torch.float32), "action": ((), torch.int64), "reward": ((), torch.float32)}
        >>> rb = PrioritizedReplayBuffer(1000, spec, alpha=0.6, generator=torch.Generator().manual_seed(0))
        >>> keys = rb.add({"obs": torch.randn(8, 4), "action": torch.zeros(8, dtype=torch.int64),
        ...                "reward": torch.ones(8)})
        >>> s = rb.sample(4, beta=0.4)
        >>> s["obs"].shape, s.weights.dtype
        (torch.Size([4, 4]), torch.float32)
        >>> rb.update_priorities(s.keys, torch.tensor([0.5, -2.0, 0.1, 1.0]))
    """

    def __init__(self, capacity: int, spec, device=None, alpha: float = 0.6, eps: float = 1e-6,
                 backend: str = "auto", generator: torch.Generator | None = None,
                 fanout: int = DEFAULT_FANOUT, normalize: str = "global", strict: bool = False):
        super().__init__(capacity, spec, device, generator)
        if normalize not in ("global", "batch"):
            raise ValueError(f"normalize: expected 'global' or 'batch', got {normalize!r}")
        self.tree = SumTree(self.capacity, fanout, alpha, eps, self.device, backend)
        self.added = self.tree.added  # one key counter, shared with the tree
        self.normalize = normalize
        self.strict = bool(strict)

    @property
    def backend(self) -> str:
        return self.tree.backend

    @property
    def alpha(self) -> float:
        return self.tree.alpha

    @property
    def eps(self) -> float:
        return self.tree.eps

    def add(self, batch, valid=None) -> torch.Tensor:
        n, tensors = self.storage.check_batch(batch)
        valid = check_mask(valid, n, self.device)
        keys = self.added + torch.arange(n, dtype=torch.int64, device=self.device)
        self.storage.write(keys, tensors)
        self.tree.add(n, valid)
        self.num_added += n
        return keys

    def sample(self, batch_size: int, beta: float = 0.4) -> Batch:
        keys, slots, prio, w = self.tree._sample(batch_size, beta, self.generator, self.normalize)
        return Batch(self.storage.gather(slots), keys, w, prio)

    def update_priorities(self, keys, td_errors) -> None:
        self.tree.update(keys, td_errors, strict=self.strict)

    def stats(self) -> dict:
        """{"sanitized": NaN/inf TD errors replaced, "stale_dropped": updates dropped because
        the row had been overwritten, "max_raw_priority": running max of |d| + eps}.
        Producing these never syncs; reading them here does."""
        return self.tree.stats()

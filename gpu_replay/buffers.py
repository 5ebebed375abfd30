"""The replay buffers: uniform and prioritized, both device-resident rings of named fields."""
from __future__ import annotations

import functools
import threading

import torch

from . import _checkpoint as ckpt

from ._storage import Storage, as_device, check_float, check_int, check_keys, check_mask
from ._tree import DEFAULT_FANOUT, SumTree
from .kernels.sample import keys_from_slots
from .nstep import NStep


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


def _locked(method):
    """Run a public method under the buffer's lock (see "Threads" in the class docstring)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return run


class ReplayBuffer:
    """Uniform replay over a device-resident ring of named fields.

    ``spec`` maps field names to (shape, dtype), e.g.
    ``{"obs": ((4, 84, 84), torch.uint8), "action": ((), torch.int64), "reward": ((), torch.float32)}``.
    Each field is one preallocated tensor [capacity, *shape] on ``device``.

    - ``add(batch, valid=None)``: a mapping of tensors or numpy arrays with a leading batch
      dim (any device; dtypes that cast safely are converted). Returns int64 keys,
      monotonic; the row lives at slot ``key % capacity`` until overwritten. A batch longer
      than the capacity keeps its last ``capacity`` rows, as a ring would. Rows whose
      ``valid`` is False are stored but never sampled.
    - ``sample(batch_size)``: rows drawn uniformly with replacement from the stored (valid) ones.

    n-step returns in the same object: pass ``n_step``, ``gamma`` and ``num_envs`` (and
    gymnasium's ``autoreset_mode``) and feed it with ``step(obs, action, reward, next_obs,
    terminated, truncated, **extra)``, one transition per env; ``spec`` then names the
    per-step fields (``obs``, ``action`` and extras) and the stored rows also get
    ``reward`` (n-step return), ``next_obs``, ``discount`` (gamma**k) and ``terminated``
    (see ``gpu_replay.nstep.NStep``). The TD target is
    ``reward + discount * (1 - terminated) * max_a Q(next_obs, a)``.

    Checkpoints: ``state_dict()`` / ``load_state_dict()`` hold the stored rows, keys and
    cursor, the tree, the max priority, the counters, the n-step windows and the state of a
    given ``generator``; ``save(path)`` writes them atomically (temporary file, fsync,
    rename: a crash mid-save leaves the previous file intact) with a checksum, and
    ``load(path)`` refuses a truncated, corrupt or mismatched (capacity, spec, version,
    alpha, ...) file with a ValueError, leaving the buffer as it was. Files move freely
    between CPU and CUDA buffers (a generator state is restored when the device kinds match).

    Threads: every public call holds the buffer's lock for its whole duration, so an actor
    thread adding while a learner samples and updates never sees a half-written row or a
    half-updated tree: each call sees the state before or after another, never between.
    On CUDA each call enqueues its work on the calling thread's current stream and returns
    without waiting; the lock orders the enqueueing, so threads sharing one stream (the
    default) are ordered on the device too. Threads on different streams must order them
    themselves (e.g. ``torch.cuda.current_stream().wait_stream(other)``).

    Example::

        >>> import torch
        >>> from gpu_replay import ReplayBuffer
        >>> rb = ReplayBuffer(100, {"obs": ((3,), torch.float32), "action": ((), torch.int64)})
        >>> rb.add({"obs": torch.zeros(5, 3), "action": torch.arange(5)}).tolist()
        [0, 1, 2, 3, 4]
        >>> len(rb), rb.sample(2)["obs"].shape
        (5, torch.Size([2, 3]))
    """

    def __init__(self, capacity: int, spec, device=None, generator: torch.Generator | None = None,
                 n_step: int | None = None, gamma: float = 0.99, num_envs: int | None = None,
                 autoreset_mode="next_step"):
        capacity = check_int(capacity, "capacity", 1, 2 ** 40)
        self.device = as_device(device)
        self.nstep = None
        if n_step is not None:
            if num_envs is None:
                raise ValueError("num_envs: expected the number of environments when n_step is given, got None")
            self.nstep = NStep(num_envs, n_step, gamma, self.device, spec=spec, autoreset_mode=autoreset_mode)
            spec = self.nstep.buffer_spec()
        self.storage = Storage(capacity, spec, self.device)
        self.generator = generator
        self.added = torch.zeros((), dtype=torch.int64, device=self.device)
        self.num_added = 0
        self._valid_tree: SumTree | None = None  # made at the first add() with a mask
        self._lock = threading.RLock()

    @property
    def capacity(self) -> int:
        return self.storage.capacity

    @property
    def spec(self):
        return self.storage.spec

    def __len__(self) -> int:
        return min(self.num_added, self.capacity)

    @_locked
    def add(self, batch, valid=None) -> torch.Tensor:
        n, tensors = self.storage.check_batch(batch)
        return self._add(n, tensors, check_mask(valid, n, self.device))

    def _add(self, n: int, tensors: dict, valid) -> torch.Tensor:
        """``add`` after the checks (the n-step rows come here directly: they are made in
        the spec's shapes and dtypes, on the device)."""
        if valid is not None and self._valid_tree is None:
            # uniform over the valid rows = a sum tree with every valid row at priority 1
            self._valid_tree = SumTree(self.capacity, alpha=0.0, device=self.device)
            if self.num_added:
                self._valid_tree.add(self.num_added)
        keys = self.added + torch.arange(n, dtype=torch.int64, device=self.device)
        self.storage.write(keys, tensors, self.num_added)
        if self._valid_tree is not None:
            self._valid_tree.add(n, valid)
        self.added.add_(n)
        self.num_added += n
        return keys

    @_locked
    def sample(self, batch_size: int) -> Batch:
        batch_size = check_int(batch_size, "batch_size", 1, 2 ** 31 - 1)
        if len(self) == 0:
            raise ValueError("sample: the buffer is empty; add rows first")
        if self._valid_tree is not None:
            keys, slots, _, _ = self._valid_tree._sample(batch_size, 0.0, self.generator, "global")
            return Batch(self.storage.gather(slots), keys)
        slots = torch.randint(0, len(self), (batch_size,), generator=self.generator, device=self.device)
        return Batch(self.storage.gather(slots), keys_from_slots(slots, self.added, self.capacity))

    @_locked
    def step(self, obs, action, reward, next_obs, terminated, truncated, **kwargs) -> torch.Tensor | None:
        """One environment step per env through the n-step windows; the transitions it
        completes (exactly num_envs rows after the first n - 1 calls) are added. Returns
        their keys, or None while the windows fill. Needs ``n_step`` at construction."""
        if self.nstep is None:
            raise ValueError("step: this buffer has no n-step stage; construct it with n_step=, gamma=, num_envs=")
        out = self.nstep.step(obs, action, reward, next_obs, terminated, truncated, **kwargs)
        return None if out is None else self._add(self.nstep.num_envs, *self._rows_mask(out))

    @_locked
    def flush(self) -> torch.Tensor | None:
        """Add what is left in the n-step windows (the end of a run); returns its keys or None."""
        if self.nstep is None:
            raise ValueError("flush: this buffer has no n-step stage; construct it with n_step=, gamma=, num_envs=")
        out = self.nstep.flush()
        return None if out is None else self._add(out[1].shape[0], *self._rows_mask(out))

    def _rows_mask(self, out):
        """Only next-step autoreset makes rows that are not transitions; in the other modes
        every emitted row is valid, so no mask (and, for uniform replay, no tree) is needed."""
        rows, valid = out
        return rows, (valid if self.nstep.autoreset_mode == "next_step" else None)


    @_locked
    def clear(self) -> None:
        """Empty the buffer (and its n-step windows); keys start again at 0."""
        for buf in self.storage.data.values():
            buf.zero_()
        self.added.zero_()
        self.num_added = 0
        self._valid_tree = None
        if self.nstep is not None:
            self.nstep.reset()
        self._clear_tree()

    def _clear_tree(self) -> None:
        pass

    # ------------------------------------------------------------------ checkpoints
    def _config(self) -> dict:
        return {"kind": type(self).__name__, "capacity": self.capacity, "spec": ckpt.spec_to_state(self.spec)}

    @_locked
    def state_dict(self) -> dict:
        """Everything needed to resume, as CPU tensors and plain values (reads the device)."""
        n = len(self)
        g = self.generator
        return {
            "format": "gpu_replay", "version": ckpt.FORMAT_VERSION, **self._config(),
            "num_added": self.num_added, "added": int(self.added),
            "data": {k: v[:n].detach().to("cpu", copy=True) for k, v in self.storage.data.items()},
            "tree": self._tree_state(),
            "nstep": None if self.nstep is None else _cpu(self.nstep.state_dict()),
            "generator": None if g is None else {"device": g.device.type, "state": g.get_state()},
        }

    def _tree_state(self):
        return None if self._valid_tree is None else self._valid_tree.state_dict()

    def _prepare_tree(self, sd):
        if sd is None:
            return lambda: setattr(self, "_valid_tree", None)
        tree = SumTree(self.capacity, alpha=0.0, device=self.device)
        commit = tree._prepare_load(sd)
        return lambda: (commit(), setattr(self, "_valid_tree", tree))

    @_locked
    def load_state_dict(self, sd) -> None:
        """Restore ``state_dict()``/``load()`` output. Everything is checked first: a
        mismatch (kind, capacity, spec, version, alpha, ...) raises ValueError and changes nothing."""
        if not isinstance(sd, dict) or sd.get("format") != "gpu_replay":
            raise ValueError("load_state_dict: not a gpu_replay state dict")
        ckpt.expect(sd.get("version") == ckpt.FORMAT_VERSION, "version", ckpt.FORMAT_VERSION, sd.get("version"))
        for key, want in self._config().items():
            ckpt.expect(sd.get(key) == want, key, want, sd.get(key))
        num_added, added = ckpt.counts(sd, "")
        n = min(num_added, self.capacity)
        data = sd.get("data")
        if not isinstance(data, dict) or set(data) != set(self.spec):
            raise ValueError(f"load_state_dict: data: expected fields {list(self.spec)}")
        rows = {k: ckpt.tensor_like(data, k, (n, *shape), dt) for k, (shape, dt) in self.spec.items()}
        commit_tree = self._prepare_tree(sd.get("tree"))
        ckpt.expect((sd.get("nstep") is None) == (self.nstep is None), "n-step stage",
                    self.nstep is not None, sd.get("nstep") is not None)
        gen = sd.get("generator")
        if self.nstep is not None:
            self.nstep.load_state_dict(sd["nstep"])  # checks fully before it changes anything
        commit_tree()
        for k, buf in self.storage.data.items():
            buf[:n].copy_(rows[k])
            buf[n:].zero_()
        self.added.fill_(added)
        self.num_added = num_added
        if gen is not None and self.generator is not None and gen["device"] == self.generator.device.type:
            self.generator.set_state(gen["state"])

    def save(self, path) -> None:
        """Write ``state_dict()`` to ``path`` atomically (see the class docstring)."""
        ckpt.save_atomic(self.state_dict(), path)

    def load(self, path) -> None:
        """Load a file written by ``save``; a bad file raises ValueError, changing nothing."""
        self.load_state_dict(ckpt.load_checked(path))


def _cpu(sd: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v for k, v in sd.items()}


class PrioritizedReplayBuffer(ReplayBuffer):
    """Prioritized experience replay (Schaul et al. 2016) on a device-resident K-ary sum tree.

    - ``add(batch, valid=None)``: as ``ReplayBuffer.add``; every new row enters with the
      running max priority (m ** alpha, m = max |d| + eps seen, 1.0 at first). Rows whose
      ``valid`` is False are stored with priority 0 and never sampled.
    - ``sample(batch_size, beta)``: P(i) = p_i / sum p, stratified; returns a ``Batch`` with
      the fields, ``keys``, ``weights`` (float32 IS weights (N P(i)) ** -beta, divided by
      their global max, i.e. (p_i / p_min) ** -beta; ``normalize="batch"`` divides by the
      batch max instead) and ``priorities``.
    - ``step(...)`` / ``flush()`` with ``n_step=`` (see ``ReplayBuffer``): n-step rows go
      straight in, the rows that only keep the shape fixed with priority 0.
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
                 fanout: int = DEFAULT_FANOUT, normalize: str = "global", strict: bool = False,
                 n_step: int | None = None, gamma: float = 0.99, num_envs: int | None = None,
                 autoreset_mode="next_step"):
        super().__init__(capacity, spec, device, generator, n_step, gamma, num_envs, autoreset_mode)
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

    def _add(self, n: int, tensors: dict, valid) -> torch.Tensor:
        keys = self.added + torch.arange(n, dtype=torch.int64, device=self.device)
        self.storage.write(keys, tensors, self.num_added)
        self.tree._add(keys, valid)
        self.num_added += n
        return keys

    @_locked
    def sample(self, batch_size: int, beta: float = 0.4) -> Batch:
        keys, slots, prio, w = self.tree._sample(batch_size, beta, self.generator, self.normalize)
        return Batch(self.storage.gather(slots), keys, w, prio)

    @_locked
    def update_priorities(self, keys, td_errors) -> None:
        self.tree.update(keys, td_errors, strict=self.strict)

    def _config(self) -> dict:
        return {**super()._config(), "fanout": self.tree.state.fanout, "alpha": self.alpha, "eps": self.eps}

    def _tree_state(self):
        return self.tree.state_dict()

    def _clear_tree(self) -> None:
        self.tree.clear()

    def _prepare_tree(self, sd):
        return self.tree._prepare_load(sd)

    @_locked
    def stats(self) -> dict:
        """{"sanitized": NaN/inf TD errors replaced, "stale_dropped": updates dropped because
        the row had been overwritten, "max_raw_priority": running max of |d| + eps}.
        Producing these never syncs; reading them here does."""
        return self.tree.stats()

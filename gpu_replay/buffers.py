"""The replay buffers: a lock, a storage, a sampler and an optional n-step stage.

``ReplayBuffer`` samples uniformly, ``PrioritizedReplayBuffer`` by priority; both keep their
rows in a ``Storage`` (``gpu_replay.storage``), hand out keys through their sampler's
``KeyCounter`` (``gpu_replay.keys``) and, given ``n_step=``, feed themselves from an ``NStep``
(``gpu_replay.nstep``). Each piece of state has one owner; the buffer only composes them.
"""
from __future__ import annotations

import functools
import threading

import numpy as np
import torch

from . import checkpoint as ckpt
from ._backend import resolve_backend
from ._checks import StateReader, as_device, check_int, check_keys, check_mask, check_rows
from .nstep import NStep
from .sampler import PrioritizedSampler, Sample, UniformSampler, linear_beta
from .storage import Storage
from .sumtree import DEFAULT_FANOUT

__all__ = ["Batch", "ReplayBuffer", "PrioritizedReplayBuffer", "linear_beta"]


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
            raise KeyError(f"batch[{name!r}]: expected one of the fields {list(self.fields)}, got {name!r}") from None

    def __contains__(self, name: str) -> bool:
        return name in self.fields

    def __len__(self) -> int:
        return self.keys.shape[0]

    def __repr__(self) -> str:
        return f"Batch(size={len(self)}, fields={list(self.fields)})"


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

    n-step returns in the same object: pass ``n_step``, ``gamma`` and ``num_envs`` (and
    gymnasium's ``autoreset_mode``) and feed it with ``step(obs, action, reward, next_obs,
    terminated, truncated, info=info, **extra)``, one transition per env; ``spec`` then names
    the per-step fields (``obs``, ``action`` and extras) and the stored rows also get
    ``reward`` (n-step return), ``next_obs``, ``discount`` (gamma**k) and ``terminated``
    (see ``gpu_replay.nstep``). The TD target is
    ``reward + discount * (1 - terminated) * max_a Q(next_obs, a)``.

    Pixel observations, every frame stored once: with ``frame_stack=S`` (and ``n_step``,
    ``num_envs``), ``spec["obs"]`` is ``((S, *frame), dtype)``, the stack on the leading axis
    as gymnasium's ``FrameStackObservation`` gives it, and ``step()`` keeps each env's stream
    of single frames once (true final observations included); rows hold references and
    ``obs`` / ``next_obs`` stacks are rebuilt on the device when sampled: ~7.2 kB per 84x84x4
    transition instead of ~56 kB. Such a buffer is fed by ``step()`` only; rows whose frames
    have been overwritten are never sampled (see ``gpu_replay.frames``).

    Checkpoints: ``state_dict()`` / ``load_state_dict()`` hold the stored rows, the key
    counter, the sampler's tree, maxima and counters, the n-step windows and the state of a
    given ``generator``; ``save(path)`` writes them atomically (temporary file, fsync,
    rename: a crash mid-save leaves the previous file intact) with a checksum, and
    ``load(path)`` refuses a truncated, corrupt or mismatched (capacity, spec, version,
    alpha, ...) file with a ValueError, leaving the buffer as it was. Files move freely
    between CPU and CUDA buffers (a generator state is restored when the device kinds match).
    Keys are never reused: after ``clear()`` or a ``load()`` that rolls back, every key
    handed out before is stale.

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
                 autoreset_mode="next_step", backend: str = "auto", frame_stack: int | None = None):
        capacity = check_int(capacity, "capacity", 1, 2 ** 40)
        self.device = as_device(device)
        self.backend = backend = resolve_backend(backend, self.device)
        self.generator = generator
        self._lock = threading.RLock()
        self._frames = None
        with torch.inference_mode(False):  # a buffer made inside inference_mode stays writable
            if frame_stack is not None:  # [frames] every frame stored once (gpu_replay.frames)
                from .frames import make_parts
                self.nstep, self.storage = make_parts(capacity, spec, frame_stack, n_step, gamma, num_envs,
                                                      autoreset_mode, self.device, backend)
                self._frames = self.storage
            else:
                self.nstep = self._make_nstep(spec, n_step, gamma, num_envs, autoreset_mode, backend)
                if self.nstep is not None:
                    spec = self.nstep.buffer_spec()
                self.storage = Storage(capacity, spec, self.device, backend)
            self.sampler = self._make_sampler(capacity, backend)
        self.sampler.lock = self._lock
        for tree in self.sampler.trees():
            tree.lock = self._lock  # rb.tree.check() from a monitor thread waits for a call in flight

    def _make_nstep(self, spec, n_step, gamma, num_envs, autoreset_mode, backend):
        if n_step is None:
            return None
        if num_envs is None:
            raise ValueError("num_envs: expected the number of environments when n_step is given, got None")
        return NStep(num_envs, n_step, gamma, self.device, spec=spec, autoreset_mode=autoreset_mode,
                     backend=backend)

    def _make_sampler(self, capacity: int, backend: str):
        # next-step autoreset emits rows that are not transitions: a validity mask from the start
        # [frames] and a frame buffer invalidates rows whose frames are overwritten
        masked = self.nstep is not None and (self.nstep.autoreset_mode == "next_step" or self._frames is not None)
        return UniformSampler(capacity, self.device, backend, masked=masked)

    @property
    def capacity(self) -> int:
        return self.storage.capacity

    @property
    def spec(self):
        return self.storage.spec

    @property
    def nbytes(self) -> int:
        """Device bytes the buffer holds: the stored rows (the storage: with ``frame_stack=``
        the frames, references and the rest), the sampler's sum tree (prioritized replay, or
        uniform replay's validity tree: ~9 bytes a row at fanout 16) and key counter, and the
        n-step windows."""
        total = self.storage.nbytes + self.sampler.counter.t.numel() * 8
        for tree in self.sampler.trees():
            st = tree.state
            total += sum(t.numel() * t.element_size() for t in (st.sums, st.mins, st.maxes, st.counters))
        if self.nstep is not None:
            total += self.nstep.nbytes
        return total

    @property
    def num_added(self) -> int:
        """Rows added since the buffer was made or last cleared (a device read on CUDA)."""
        added, floor = self.sampler.counter.read()
        return added - floor

    def __len__(self) -> int:
        """Rows stored (at most ``capacity``). On CUDA this reads the device key counter (a
        sync), so it is right after CUDA graph replays too."""
        return self.sampler.counter.live()

    # ------------------------------------------------------------------ adding
    @_locked
    def add(self, batch, valid=None) -> torch.Tensor:
        """Store rows; returns their keys (int64 [n] on the device, monotonic).

        ``batch``: a mapping with exactly the spec's fields, each a tensor (any device) or
        numpy array of shape [n, *shape] with a dtype that casts safely to the field's
        (``torch.can_cast``: float64 -> float32 rounds, int64 -> uint8 wraps; float -> int is
        refused). Tensors that require grad are stored detached. Row i gets key
        ``A + i`` (A = rows ever added, counting keys skipped by ``clear``) and lives at slot
        ``key % capacity`` until overwritten; a batch longer than the capacity keeps its last
        ``capacity`` rows, as a ring would. ``valid`` (bool [n]): rows where it is False are
        stored but never sampled, whatever is later done with their keys. A rejected call
        (bad field set, shape, dtype, device, a conversion that fails) raises before anything
        is written.
        """
        if self._frames is not None:  # [frames]
            raise ValueError("add: expected a buffer without frame_stack= (a frame buffer stores each env's stream "
                             "of frames once, so it is fed by step() only), got a frame buffer; use step()")
        fast = self.storage.host_rows(batch)  # the CPU's plain case: metadata checks only
        if fast is not None:
            n, rows = fast
            return self._write(n, rows, check_mask(valid, n, self.device))
        n, rows = check_rows(self.spec, batch, self.device)
        return self._add(n, rows, check_mask(valid, n, self.device))

    def _add(self, n: int, rows: dict, valid) -> torch.Tensor:
        """``add`` after the checks (the n-step rows come here directly)."""
        return self._write(n, self.storage.prepare(rows), valid)  # every field ready before the first write

    def _write(self, n: int, rows: dict, valid) -> torch.Tensor:
        sampler = self.sampler
        keys = self.storage.write(rows, n, sampler.counter, keys=sampler.wants_keys(valid))
        return sampler.add(n, valid, keys)

    @_locked
    def step(self, obs, action, reward, next_obs, terminated, truncated, *, info=None, final_obs=None,
             final_obs_mask=None, **extra) -> torch.Tensor | None:
        """One environment step per env through the n-step windows; the transitions it
        completes are added. Returns their keys, or None while the windows fill.

        Inputs as gymnasium's vector env gives them (leading dim ``num_envs``; numpy arrays
        or tensors): ``obs``/``next_obs`` ``[E, *obs_shape]``, ``action`` and extras
        ``[E, *shape]``, ``reward`` ``[E]``, ``terminated``/``truncated`` bool ``[E]``; pass
        ``info=info`` (same-step autoreset reads the final observations from it; the other
        modes check it for a mode mismatch). After the first n - 1 calls every call adds
        exactly ``num_envs`` rows: row e is the transition env e started n - 1 calls ago,
        with reward R = sum_{j<k} gamma**j r_{t+j}, ``next_obs`` after its k-th step,
        ``discount`` = gamma**k and ``terminated``, k = n or fewer when the episode ended
        (truncation bootstraps, termination does not; rewards never cross an episode). With
        next-step autoreset the reset step is stored as an invalid row (never sampled).
        Needs ``n_step`` at construction.
        """
        if self.nstep is None:
            raise ValueError("step: expected a buffer with an n-step stage (construct it with n_step=, "
                             "gamma=, num_envs=), got one without")
        if self._frames is not None:  # [frames] frames into the streams, references into the n-step stage
            out = self._frames.step(self.nstep, self.sampler, obs, action, reward, next_obs, terminated, truncated,
                                    info, final_obs, final_obs_mask, extra)
        else:
            out = self.nstep._step(obs, action, reward, next_obs, terminated, truncated, info, final_obs,
                                   final_obs_mask, extra, host_rows=True)
        return None if out is None else self._add_emitted(out)

    @_locked
    def flush(self) -> torch.Tensor | None:
        """Add what is left in the n-step windows (the end of a run); returns its keys or None."""
        if self.nstep is None:
            raise ValueError("flush: expected a buffer with an n-step stage (construct it with n_step=, "
                             "gamma=, num_envs=), got one without")
        if self._frames is not None:  # [frames] the next step() writes its whole obs stack
            out = self.nstep.flush()
            keys = None if out is None else self._add_emitted(out)
            self._frames.flushed()
            return keys
        out = self.nstep._flush(host_rows=True)
        return None if out is None else self._add_emitted(out)

    def _add_emitted(self, out) -> torch.Tensor:
        rows, valid = out
        if self._frames is not None:  # [frames] rows whose frames are gone are stored invalid; keys registered
            valid = self._frames.rows_valid(rows, valid if self.nstep.autoreset_mode == "next_step" else None)
            keys = self._add(valid.shape[0], rows, valid)
            self._frames.register(rows, keys)
            return keys
        # only next-step autoreset makes rows that are not transitions
        mask = valid if self.nstep.autoreset_mode == "next_step" else None
        if isinstance(valid, np.ndarray):  # the CPU path: numpy rows of the storage's dtypes, not aliasing it
            return self._write(valid.shape[0], rows, None if mask is None else torch.from_numpy(mask))
        return self._add(valid.shape[0], rows, mask)

    # ------------------------------------------------------------------ sampling
    @_locked
    def sample(self, batch_size: int) -> Batch:
        """``batch_size`` rows drawn uniformly with replacement from the stored rows (the
        valid ones, if masks were used), with the buffer's ``generator``; returns a ``Batch``
        (``weights`` and ``priorities`` None). Raises ValueError on an empty buffer."""
        batch_size = check_int(batch_size, "batch_size", 1, 2 ** 31 - 1)
        sampler = self.sampler
        if self.storage.path == "triton" and sampler.mask_tree is None:  # draw, slots, keys, rows: one launch
            sampler.check_nonempty()
            r = torch.rand(batch_size, generator=self.generator, dtype=torch.float64, device=self.device)
            fields, _, keys = self.storage.gather_uniform(r, sampler.counter)
            return Batch(fields, keys)
        return self._batch(sampler.sample(batch_size, self.generator))

    def _batch(self, s: Sample) -> Batch:
        return Batch(self.storage.gather(s.slots), s.keys, s.weights, s.priorities)

    # ------------------------------------------------------------------ lifecycle
    @_locked
    def clear(self) -> None:
        """Empty the buffer (and its n-step windows). Keys go on from the next multiple of the
        capacity: every key handed out before is stale for good."""
        self.storage.clear()
        self.sampler.clear()
        if self.nstep is not None:
            self.nstep.reset()

    def _config(self) -> dict:
        cfg = {"kind": type(self).__name__, "capacity": self.capacity, "spec": ckpt.spec_to_state(self.spec)}
        if self._frames is not None:  # [frames]
            cfg["frame_stack"] = self._frames.stack
        return cfg

    @_locked
    def state_dict(self) -> dict:
        """Everything needed to resume, as CPU tensors and plain values (reads the device: a sync)."""
        n = len(self)
        g = self.generator
        return {
            "format": "gpu_replay", "version": ckpt.FORMAT_VERSION, **self._config(),
            "rows": n, "data": self.storage.rows_state(n),
            "sampler": self.sampler.state_dict(),
            "nstep": None if self.nstep is None else self.nstep.state_dict(),
            "generator": None if g is None else {"device": g.device.type, "state": g.get_state()},
            **({"frames": self._frames.frames_state()} if self._frames is not None else {}),  # [frames]
        }

    @_locked
    def load_state_dict(self, sd) -> None:
        """Restore ``state_dict()``/``load()`` output. Everything is checked first (config,
        every tensor's shape, dtype and values, the generator state): a mismatch raises
        ValueError and changes nothing."""
        self._prepare_load_state_dict(sd)()

    def _prepare_load_state_dict(self, sd):
        """``load_state_dict``'s checks; returns the function that commits (call both under the
        lock). Hook for ``gpu_replay.distributed``: every shard checks, then all commit or none."""
        r = StateReader(sd, "load_state_dict")
        r.check(r.sd.get("format") == "gpu_replay", "format", "'gpu_replay'", repr(r.sd.get("format")))
        r.same("version", ckpt.FORMAT_VERSION)
        for key, want in self._config().items():
            r.same(key, want)
        sampler = r.sub("sampler")
        tree = sampler.sub("tree") if sampler.has("tree") else sampler
        added = tree.int("added", 0, 2 ** 62)
        floor = tree.int("floor", 0, added)
        tree.check(floor % self.capacity == 0, "floor", f"a multiple of the capacity {self.capacity}", floor)
        n = r.int("rows", 0, self.capacity)
        r.check(n == min(added - floor, self.capacity), "rows", f"min(added - floor, capacity) = "
                f"{min(added - floor, self.capacity)}", n)
        data = r.sub("data")
        stored = getattr(self.storage, "rows_spec", self.spec)  # [frames] the rows hold references
        r.check(set(data.sd) == set(stored), "data", f"the fields {list(stored)}", list(data.sd))
        rows = {k: data.tensor(k, (n, *shape), dt) for k, (shape, dt) in stored.items()}
        shift = self.sampler.counter.shift_for(added, floor)
        commit_sampler = self.sampler.prepare_load(sampler, shift)
        nsd = r.get("nstep")
        r.check((nsd is None) == (self.nstep is None), "nstep", "an n-step state" if self.nstep is not None
                else "None (this buffer has no n-step stage)", "None" if nsd is None else "an n-step state")
        commit_nstep = self.nstep.prepare_load(nsd, r.sub("nstep")) if self.nstep is not None else None
        gen = self._check_generator(r.get("generator"))
        commit_frames = self._frames.prepare_load(r.sub("frames"), shift) if self._frames is not None else None
        # everything checked: commit

        def commit():
            if commit_frames is not None:  # [frames]
                commit_frames()
            if commit_nstep is not None:
                commit_nstep()
            commit_sampler()
            self.storage.load_rows(rows, n)
            if gen is not None:
                self.generator.set_state(gen)
        return commit

    def _check_generator(self, g):
        """The generator state to restore (None: nothing to restore), checked on a scratch
        generator first so that a bad entry fails before anything changes."""
        if g is None or self.generator is None:
            return None
        if not isinstance(g, dict) or set(g) != {"device", "state"} or not isinstance(g["state"], torch.Tensor):
            raise ValueError(f"load_state_dict.generator: expected {{'device': str, 'state': uint8 tensor}}, got "
                             f"{type(g).__name__}")
        if g["device"] != self.generator.device.type:
            return None  # CPU and CUDA generator states differ: keep this buffer's generator
        try:
            torch.Generator(self.generator.device).set_state(g["state"])
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"load_state_dict.generator: expected a valid {g['device']} generator state, got "
                             f"one that does not load ({type(e).__name__}: {e})") from e
        return g["state"]

    def save(self, path) -> None:
        """Write ``state_dict()`` to ``path`` atomically (see the class docstring)."""
        ckpt.save_atomic(self.state_dict(), path)

    def load(self, path) -> None:
        """Load a file written by ``save``; a bad file raises ValueError, changing nothing."""
        self.load_state_dict(ckpt.load_checked(path))


class PrioritizedReplayBuffer(ReplayBuffer):
    """Prioritized experience replay (Schaul et al. 2016) on a device-resident K-ary sum tree.

    Everything ``ReplayBuffer`` does (``add``, ``step``/``flush`` with ``n_step=``,
    checkpoints, threads), with rows drawn by priority: ``sample(batch_size, beta)`` draws
    P(i) = p_i / sum p and returns IS weights; ``update_priorities(keys, td_errors)`` sets
    p = (|d| + eps) ** alpha. New rows enter with the running max priority.

    On CUDA no call waits for the device (no ``.item()``, no data-dependent shapes); the
    Triton kernels run with ``backend="auto"``/``"triton"``, numba-compiled loops on the
    CPU, the pure-torch twins with ``"torch"`` (and on any other device). Results of all
    three are bit-identical.

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
                 autoreset_mode="next_step", frame_stack: int | None = None):
        self._tree_args = dict(alpha=alpha, eps=eps, fanout=fanout, normalize=normalize, strict=strict)
        super().__init__(capacity, spec, device, generator, n_step, gamma, num_envs, autoreset_mode, backend,
                         frame_stack)

    def _make_sampler(self, capacity: int, backend: str):
        return PrioritizedSampler(capacity, self.device, backend=backend, **self._tree_args)

    @property
    def tree(self):
        """The ``SumTree`` of priorities (and the key counter)."""
        return self.sampler.tree

    @property
    def alpha(self) -> float:
        return self.tree.alpha

    @property
    def eps(self) -> float:
        return self.tree.eps

    @property
    def normalize(self) -> str:
        return self.sampler.normalize

    @_locked
    def sample(self, batch_size: int, beta=0.4) -> Batch:
        """``batch_size`` rows drawn with P(i) = p_i / sum_j p_j, stratified: draw i takes
        u_i = (i + r_i) * total / B, r_i ~ U[0, 1) from the buffer's ``generator``, and the row
        whose interval of the cumulative priority holds u_i. Returns a ``Batch`` with
        ``weights`` w_i = (N P(i)) ** -beta / max_j (N P(j)) ** -beta = (p_i / p_min) ** -beta
        (float32; ``normalize="batch"`` divides by the batch's max weight instead) and
        ``priorities`` p_i (float64). A row with priority 0 (added with ``valid=False``) is
        never returned, even for draws at the very top of the mass. ``beta``: a float in
        [0, 1] (see ``linear_beta``) or a one-element float tensor on the device (read there:
        a CUDA graph replays with its current value). Empty buffer: ValueError; every stored
        row invalid: ValueError on the CPU; on CUDA (which cannot check without a sync) keys
        -1 with weight 0.
        """
        batch_size = check_int(batch_size, "batch_size", 1, 2 ** 31 - 1)
        return self._batch(self.sampler.sample(batch_size, self.generator, beta))

    @_locked
    def update_priorities(self, keys, td_errors) -> None:
        """p = clamp((|d| + eps) ** alpha, 2**-500, 2**500) for each key's row, from raw TD
        errors d (a tensor [B] or [B, 1] on any device, numpy, or a list; it may require
        grad). Rules, all applied on the device without a sync:

        - a key whose row was overwritten or cleared since it was sampled, a key never handed
          out, and a key of a row added with ``valid=False`` are dropped and counted
          (``stats()["stale_dropped"]``), never applied to another row;
        - NaN/inf TD errors are replaced by the running max (|d| + eps) and counted
          (``stats()["sanitized"]``); ``strict=True`` raises instead and changes nothing;
        - a key repeated in one call: the last write wins; negative d are ordinary (|d|);
        - the running max, which new rows enter with, only grows.
        """
        self.sampler.update(keys, td_errors)  # checked there (metadata only, on the CPU's fast path)

    def _config(self) -> dict:
        return {**super()._config(), "fanout": self.tree.fanout, "alpha": self.alpha, "eps": self.eps}

    @_locked
    def stats(self) -> dict:
        """{"sanitized": NaN/inf TD errors replaced, "stale_dropped": updates dropped (stale,
        never handed out, or an invalid row), "max_raw_priority": running max of |d| + eps,
        "max_priority": the priority new rows enter with}. Producing these never syncs;
        reading them here does."""
        return self.tree.stats()

    @_locked
    def check(self) -> float:
        """The tree against a float64 recomputation (0.0 expected; see ``SumTree.check``),
        under the buffer's lock (a monitor thread sees no half-made update)."""
        return self.tree.check()

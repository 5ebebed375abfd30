"""The CUDA code path, checked on a CPU: host syncs, host/device mixes and device launches.

A buffer built with ``backend="triton"`` takes the path it takes on CUDA (Triton kernels, run
here by the interpreter; the device key counter; inputs staged through pinned memory), but
its tensors live on the CPU, where a sync costs nothing and cannot be seen. This trap tells
the two kinds of CPU tensor apart and reports what would sync or fail on a GPU:

- *device* tensors: everything reachable from the buffer when the trap starts, everything a
  factory makes with an explicit ``device=`` while a call runs, and every op's output that
  has a device input;
- *host* tensors: everything else (numpy data, ``torch.from_numpy``, factories without a
  device); *pinned* ones: what ``gpu_replay.staging.pinned_empty`` returns.

While a public call runs (``trap.call(fn, ...)``) it records:

- ``sync``: a device tensor read by the host (``.item()``, ``.tolist()``, ``.numpy()``,
  ``bool()``/``int()``/``float()``, ``.cpu()``, ``_local_scalar_dense``), an op whose output
  size depends on device data (``nonzero``, ``masked_select``, boolean indexing, ``unique``,
  ...), a blocking host -> device copy, ``torch.tensor(data, device=...)``;
- ``pageable``: a non-blocking host -> device copy from memory that is not pinned;
- ``mix``: an op (other than a copy) that takes a host tensor with a dimension and a device
  tensor (CUDA raises "Expected all tensors to be on the same device");
- ``launches``: Triton launches plus device ops that launch a kernel (not views, not
  allocations), by name.
"""
from __future__ import annotations

import collections
import functools
import traceback

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

SYNC_OPS = {"_local_scalar_dense", "nonzero", "nonzero_static", "masked_select", "unique", "_unique", "_unique2",
            "unique_consecutive", "unique_dim", "repeat_interleave", "bincount", "histc", "equal", "is_nonzero",
            "allclose", "item"}
NO_LAUNCH = {"view", "_unsafe_view", "as_strided", "slice", "select", "unsqueeze", "squeeze", "expand", "permute",
             "t", "transpose", "alias", "detach", "split", "split_with_sizes", "unbind", "_reshape_alias",
             "empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "lift_fresh", "set_",
             "resize_", "view_as_real", "view_as_complex", "_to_copy_noop", "unfold", "diagonal", "narrow"}
COPY_OPS = {"copy_", "_to_copy", "to", "_copy_from", "_copy_from_and_resize", "index_put_", "index_put"}
FACTORIES = ("empty", "zeros", "ones", "full", "arange", "rand", "randn", "randint", "empty_strided",
             "linspace", "tensor", "as_tensor")
PY_SYNC = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "cpu")


def _ptr(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except Exception:  # noqa: BLE001
        return 0


class Trap(TorchDispatchMode):
    def __init__(self, *roots):
        super().__init__()
        self.device_ptrs: set[int] = set()  # the marked tensors' (kept alive: their addresses stay theirs)
        self.temp_ptrs: set[int] = set()  # made during calls, kept alive until reset (no address reuse)
        self._held: list = []
        self.pinned_ptrs: set[int] = set()
        self.events: list[tuple[str, str, str]] = []
        self.launches: collections.Counter = collections.Counter()
        self.hot = 0
        self.suspended = 0
        self.creating_device = 0
        for r in roots:
            self.mark_device(r)

    # ------------------------------------------------------------------ taint
    def mark_device(self, obj, _seen=None) -> None:
        """Every tensor reachable from ``obj`` (attributes, dicts, lists, tuples) is a device tensor."""
        seen = _seen if _seen is not None else set()
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if _ptr(obj):
                self.device_ptrs.add(_ptr(obj))
                self._held.append(obj)
            return
        if isinstance(obj, (str, bytes, int, float, bool, type(None), np.ndarray, torch.dtype, torch.device)):
            return
        if isinstance(obj, dict):
            items = list(obj.values())
        elif isinstance(obj, (list, tuple, set)):
            items = list(obj)
        elif hasattr(obj, "__dict__") and type(obj).__module__.startswith(("gpu_replay", "types")):
            items = list(vars(obj).values())
        else:
            return
        for v in items:
            self.mark_device(v, seen)

    def is_device(self, t) -> bool:
        if not isinstance(t, torch.Tensor):
            return False
        p = _ptr(t)
        return p in self.device_ptrs or p in self.temp_ptrs

    def _taint(self, out) -> None:
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and _ptr(t):
                self.temp_ptrs.add(_ptr(t))
                self._held.append(t)

    def _record(self, kind: str, what: str) -> None:
        stack = "".join(traceback.format_stack(limit=14)[:-3])
        self.events.append((kind, what, stack))

    # ------------------------------------------------------------------ aten level
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.hot or self.suspended:
            out = func(*args, **kwargs)
            return out
        name = func.overloadpacket.__name__
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        dev = [t for t in tensors if self.is_device(t)]
        host = [t for t in tensors if not self.is_device(t) and t.dim() > 0]
        if name in SYNC_OPS and dev:
            self._record("sync", f"aten.{name} of a device tensor")
        if name in ("index", "index_put_", "index_put") and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in tree_flatten(args[1:2])[0]) and dev:
            self._record("sync", f"aten.{name} with a boolean mask (its size depends on device data)")
        if name == "copy_":
            dst, src = args[0], args[1]
            nb = bool(args[2]) if len(args) > 2 else bool(kwargs.get("non_blocking", False))
            if self.is_device(dst) and not self.is_device(src):
                if not nb:
                    self._record("sync", "a blocking host -> device copy")
                elif _ptr(src) not in self.pinned_ptrs:
                    self._record("pageable", "a non-blocking host -> device copy from pageable memory")
            elif self.is_device(src) and not self.is_device(dst):
                self._record("sync", "a device -> host copy")
        elif dev and host and name not in COPY_OPS:
            self._record("mix", f"aten.{name} mixes host tensor(s) {[tuple(t.shape) for t in host]} with device "
                                f"tensors")
        out = func(*args, **kwargs)
        made_device = bool(dev) or self.creating_device
        if made_device:
            self._taint(out)
            if name not in NO_LAUNCH and name not in SYNC_OPS:
                self.launches[name] += 1
        return out

    # ------------------------------------------------------------------ python level
    def __enter__(self):
        super().__enter__()
        self._saved = []
        trap = self

        def patch(owner, attr, make):
            orig = getattr(owner, attr)
            self._saved.append((owner, attr, orig))
            setattr(owner, attr, make(orig))

        for name in FACTORIES:
            def make(orig, name=name):
                @functools.wraps(orig)
                def factory(*a, **k):
                    d = k.get("device")
                    if not trap.hot or trap.suspended or d is None:
                        return orig(*a, **k)
                    if name in ("tensor", "as_tensor") and not (a and isinstance(a[0], torch.Tensor)):
                        trap._record("sync", f"torch.{name}(python data, device=...): a blocking copy")
                    trap.creating_device += 1
                    try:
                        out = orig(*a, **k)
                    finally:
                        trap.creating_device -= 1
                    trap._taint(out)
                    return out
                return factory
            patch(torch, name, make)

        for name in PY_SYNC:
            def make(orig, name=name):
                @functools.wraps(orig)
                def method(t, *a, **k):
                    if trap.hot and not trap.suspended and trap.is_device(t):
                        trap._record("sync", f"Tensor.{name}() of a device tensor")
                    return orig(t, *a, **k)
                return method
            patch(torch.Tensor, name, make)

        from gpu_replay import staging

        def make_pinned(orig):
            @functools.wraps(orig)
            def pinned_empty(*a, **k):
                out = orig(*a, **k)
                trap.pinned_ptrs.add(_ptr(out))
                return out
            return pinned_empty
        patch(staging, "pinned_empty", make_pinned)

        import triton.runtime.interpreter as interp

        def make_launch(orig):
            @functools.wraps(orig)
            def launch(ex, *a, **k):
                if trap.hot and not trap.suspended:
                    trap.launches["triton:" + ex.fn.__name__] += 1
                trap.suspended += 1  # the interpreter reads the arguments on the host: not a sync on a GPU
                try:
                    return orig(ex, *a, **k)
                finally:
                    trap.suspended -= 1
            return launch
        patch(interp.GridExecutor, "__call__", make_launch)
        return self

    def __exit__(self, *exc):
        for owner, attr, orig in reversed(self._saved):
            setattr(owner, attr, orig)
        return super().__exit__(*exc)

    # ------------------------------------------------------------------ use
    def call(self, fn, *args, **kwargs):
        """Run one public call with the trap armed; returns its result (outputs are device tensors)."""
        self.hot += 1
        try:
            out = fn(*args, **kwargs)
        finally:
            self.hot -= 1
        return out

    def reset(self) -> None:
        """Forget the events, the launches and the tensors made by earlier calls (their memory
        may now be reused by host tensors); the marked ones stay."""
        self.events.clear()
        self.launches.clear()
        self.temp_ptrs.clear()
        self._held = [t for t in self._held if _ptr(t) in self.device_ptrs]

    def n_launches(self) -> int:
        return sum(self.launches.values())

    def report(self) -> str:
        lines = [f"{k}: {w}\n{s}" for k, w, s in self.events[:5]]
        return f"{len(self.events)} event(s); launches {dict(self.launches)}\n" + "\n".join(lines)

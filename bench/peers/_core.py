"""Shared pieces of the peer harness: transition specs, data, the timing loop.

Imports only numpy at module level, so that the subprocess runner (which may run under another
interpreter, e.g. the TorchRL venv) can load it without the project installed.
"""
from __future__ import annotations

import importlib
import os
import time
from typing import Any

import numpy as np

ALPHA = 0.6
BETA = 0.4

# field -> (shape, numpy dtype). Same field names for every peer; a peer maps them to its own.
SPECS: dict[str, dict[str, tuple[tuple[int, ...], Any]]] = {
    "vec8": {
        "obs": ((8,), np.float32),
        "action": ((), np.int64),
        "reward": ((), np.float32),
        "next_obs": ((8,), np.float32),
        "done": ((), np.bool_),
    },
    "frames": {
        "obs": ((84, 84, 4), np.uint8),
        "action": ((), np.int64),
        "reward": ((), np.float32),
        "next_obs": ((84, 84, 4), np.uint8),
        "done": ((), np.bool_),
    },
}

# module (inside this package) of each peer, in the order tables show them
PEER_MODULES: dict[str, str] = {
    "seeds_sumtree": "seeds_sumtree",
    "cpprb": "peer_cpprb",
    "tianshou": "peer_tianshou",
    "torchrl": "peer_torchrl",
    "flashbax": "peer_flashbax",
    "torch_cumsum": "peer_torch_cumsum",
}

OPS = ("sample", "update", "add")


class PeerUnavailable(Exception):
    """Raised by a peer's make() when it cannot run here (not installed, unsupported spec)."""


def spec(spec_kind: str) -> dict[str, tuple[tuple[int, ...], Any]]:
    try:
        return SPECS[spec_kind]
    except KeyError:
        raise PeerUnavailable(f"unknown spec_kind {spec_kind!r} (known: {sorted(SPECS)})") from None


def row_bytes(spec_kind: str) -> int:
    return sum(int(np.prod(s)) * np.dtype(d).itemsize for s, d in spec(spec_kind).values())


def make_rows(spec_kind: str, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """n random transitions as numpy arrays (C-contiguous, final dtypes)."""
    out: dict[str, np.ndarray] = {}
    for k, (shape, dt) in spec(spec_kind).items():
        dt = np.dtype(dt)
        if dt == np.bool_:
            out[k] = rng.random(n) < 0.01
        elif dt.kind == "f":
            out[k] = rng.standard_normal((n, *shape), dtype=np.float32).astype(dt, copy=False)
        elif dt == np.uint8:
            out[k] = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
        else:
            out[k] = rng.integers(0, 4, size=(n, *shape)).astype(dt)
    return out


def fill_chunks(spec_kind: str, n: int, seed: int = 0):
    """Yield (rows, td_errors) chunks covering n transitions.

    vec8: large random chunks. frames: one random 1024-row block reused (the memory is
    touched, the contents do not matter for timing)."""
    rng = np.random.default_rng(seed)
    chunk = 1 << 18 if spec_kind == "vec8" else 1024
    block = None
    done = 0
    while done < n:
        m = min(chunk, n - done)
        if spec_kind == "vec8":
            rows = make_rows(spec_kind, m, rng)
        else:
            if block is None:
                block = make_rows(spec_kind, chunk, rng)
            rows = {k: v[:m] for k, v in block.items()}
        td = np.abs(rng.standard_normal(m)).astype(np.float32)
        yield rows, td
        done += m


def td_errors(rng: np.random.Generator, n: int) -> np.ndarray:
    """|N(0,1)| TD errors, the priorities every peer is fed."""
    return np.abs(rng.standard_normal(n)).astype(np.float32)


def limit_threads() -> None:
    """One thread everywhere (set before the libraries start their pools where possible)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = (
            flags + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        ).strip()
    try:
        import torch

        torch.set_num_threads(1)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # already started: harmless for these single-call measurements
    except ImportError:
        pass
    try:
        import sys

        if "numba" in sys.modules:
            import numba

            numba.set_num_threads(1)
    except Exception:
        pass


def load_peer(name: str):
    if name not in PEER_MODULES:
        raise KeyError(f"unknown peer {name!r} (known: {list(PEER_MODULES)})")
    return importlib.import_module(f"{__package__}.{PEER_MODULES[name]}")


def _median_us(times: list[float]) -> float:
    return float(np.median(np.asarray(times))) * 1e6


def _time_calls(fn, args_iter, repeats: int, warmup: int, max_seconds: float, sync) -> float:
    for _ in range(warmup):
        fn(*next(args_iter))
        sync()
    times: list[float] = []
    budget_end = time.perf_counter() + max_seconds
    for i in range(repeats):
        args = next(args_iter)
        t0 = time.perf_counter()
        fn(*args)
        sync()
        times.append(time.perf_counter() - t0)
        if i >= 4 and time.perf_counter() > budget_end:
            break
    return _median_us(times)


def _cycle(items):
    while True:
        yield from items


def measure(
    name: str,
    capacity: int,
    batch_sizes,
    ops=OPS,
    repeats: int = 50,
    spec_kind: str = "vec8",
    warmup: int = 5,
    max_seconds: float = 3.0,
    seed: int = 0,
    device: str = "cpu",
    beta: float = BETA,
) -> dict:
    """In-process measurement. Returns {"results": {op: {B: us}}, "meta": {...}} or
    {"skipped": reason}. Raises on a genuine failure (the caller reports it)."""
    limit_threads()
    try:
        mod = load_peer(name)
        peer = mod.make(int(capacity), spec_kind, device=device)
    except PeerUnavailable as e:
        return {"skipped": str(e)}
    except ImportError as e:
        return {"skipped": f"not installed: {e}"}
    sync = getattr(peer, "sync", lambda: None)
    meta: dict[str, Any] = {
        "version": getattr(peer, "version", None),
        "notes": getattr(peer, "notes", ""),
        "capacity": int(capacity),
        "spec_kind": spec_kind,
        "device": device,
    }
    t0 = time.perf_counter()
    peer.fill(int(capacity))
    sync()
    meta["fill_s"] = time.perf_counter() - t0
    rng = np.random.default_rng(seed + 1)
    results: dict[str, dict[int, float]] = {op: {} for op in ops}
    for op in ops:
        for B in batch_sizes:
            B = int(B)
            if op == "sample":
                results[op][B] = _time_calls(
                    peer.sample, _cycle([(B, beta)]), repeats, warmup, max_seconds, sync
                )
            elif op == "update":
                sets = []
                for _ in range(4):
                    keys = peer.sample(B, beta)
                    pr = td_errors(rng, B)
                    prep = getattr(peer, "prepare_priorities", None)
                    sets.append((keys, prep(pr) if prep else pr))
                sync()
                results[op][B] = _time_calls(
                    peer.update, _cycle(sets), repeats, warmup, max_seconds, sync
                )
            elif op == "add":
                prep = getattr(peer, "prepare_add", None)
                if prep:
                    prep(B)
                results[op][B] = _time_calls(
                    peer.add, _cycle([(B,)]), repeats, warmup, max_seconds, sync
                )
            else:
                raise ValueError(f"unknown op {op!r}")
    return {"results": results, "meta": meta}

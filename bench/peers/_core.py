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
    "gpu_replay": "peer_gpu_replay",
    "seeds_sumtree": "seeds_sumtree",
    "cpprb": "peer_cpprb",
    "tianshou": "peer_tianshou",
    "torchrl": "peer_torchrl",
    "flashbax": "peer_flashbax",
    "torch_cumsum": "peer_torch_cumsum",
}

OPS = ("sample", "update", "update_random", "add", "cycle")
# the training-step cycle: add CYCLE_ADD rows (one step of that many envs), sample(B) with IS
# weights, update(B) with the keys it returned, timed as one
CYCLE_ADD = 16


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


def split_name(name: str) -> tuple[str, dict]:
    """"gpu_replay:numba" -> ("gpu_replay", {"backend": "numba"}); plain names -> (name, {})."""
    base, _, variant = name.partition(":")
    return base, ({"backend": variant} if variant else {})


def load_peer(name: str):
    base, _ = split_name(name)
    if base not in PEER_MODULES:
        raise KeyError(f"unknown peer {name!r} (known: {list(PEER_MODULES)})")
    return importlib.import_module(f"{__package__}.{PEER_MODULES[base]}")


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


def _time_sample_update(peer, B, beta, rng, prep_pr, repeats, warmup, max_seconds, sync):
    """The training-loop pattern: sample(B) then update() of the keys it returned, each
    timed on its own. Fresh keys every update (repeating one key set would keep its tree
    paths in cache, and lazy trees such as cpprb's defer work to the call after a sample)."""
    ts: list[float] = []
    tu: list[float] = []
    budget_end = None
    for i in range(warmup + repeats):
        if i == warmup:
            budget_end = time.perf_counter() + max_seconds
        t0 = time.perf_counter()
        keys = peer.sample(B, beta)
        sync()
        t1 = time.perf_counter()
        pr = prep_pr(td_errors(rng, B))
        sync()
        t2 = time.perf_counter()
        peer.update(keys, pr)
        sync()
        t3 = time.perf_counter()
        if i >= warmup:
            ts.append(t1 - t0)
            tu.append(t3 - t2)
            if len(ts) >= 5 and time.perf_counter() > budget_end:
                break
    return _median_us(ts), _median_us(tu)


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
    unknown = set(ops) - set(OPS)
    if unknown:
        raise ValueError(f"unknown ops {sorted(unknown)} (known: {OPS})")
    limit_threads()
    try:
        mod = load_peer(name)
        peer = mod.make(int(capacity), spec_kind, device=device, **split_name(name)[1])
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
    try:
        return _run_ops(peer, meta, capacity, batch_sizes, ops, repeats, warmup, max_seconds,
                        seed, beta, sync)
    except PeerUnavailable as e:  # e.g. a batch size the peer's layout cannot take
        return {"skipped": str(e)}


def _run_ops(peer, meta, capacity, batch_sizes, ops, repeats, warmup, max_seconds, seed,
             beta, sync) -> dict:
    t0 = time.perf_counter()
    peer.fill(int(capacity))
    sync()
    meta["fill_s"] = time.perf_counter() - t0
    rng = np.random.default_rng(seed + 1)
    results: dict[str, dict[int, float]] = {op: {} for op in ops}
    prep_pr = getattr(peer, "prepare_priorities", None) or (lambda x: x)
    for B in (int(b) for b in batch_sizes):
        if "sample" in ops or "update" in ops:
            ts, tu = _time_sample_update(peer, B, beta, rng, prep_pr, repeats, warmup,
                                         max_seconds, sync)
            if "sample" in ops:
                results["sample"][B] = ts
            if "update" in ops:
                results["update"][B] = tu
        if "update_random" in ops:
            prios = [prep_pr(td_errors(rng, B)) for _ in range(8)]
            keys = [peer.random_keys(B, rng) for _ in range(64)]  # fresh keys each call (made untimed)
            results["update_random"][B] = _time_calls(
                peer.update, _cycle([(k, prios[i % 8]) for i, k in enumerate(keys)]), repeats, warmup,
                max_seconds, sync)
        if "add" in ops:
            prep = getattr(peer, "prepare_add", None)
            if prep:
                prep(B)
            results["add"][B] = _time_calls(
                peer.add, _cycle([(B,)]), repeats, warmup, max_seconds, sync
            )
        if "cycle" in ops:
            prep = getattr(peer, "prepare_add", None)
            if prep:
                prep(CYCLE_ADD)
            prios = [prep_pr(td_errors(rng, B)) for _ in range(8)]

            def one_cycle(pr, B=B):
                peer.add(CYCLE_ADD)
                peer.update(peer.sample(B, beta), pr)

            results["cycle"][B] = _time_calls(one_cycle, _cycle([(p,) for p in prios]), repeats, warmup,
                                              max_seconds, sync)
    return {"results": results, "meta": meta}

"""Subprocess entry point: measure one peer, print its timings as JSON.

    python bench/peers/runner.py '{"name": "torchrl", "capacity": 1000000,
                                   "batch_sizes": [256, 1024], "ops": ["sample"]}'

Arguments are those of bench.peers._core.measure (name, capacity, batch_sizes, ops,
repeats, spec_kind, warmup, max_seconds, seed, device, beta); "-" reads them from stdin.
The last stdout line is `PEERS_JSON {...}`: {"results": {op: {B: us}}, "meta": {...}},
{"skipped": reason} or {"error": message}.

Runs as a plain script so that it works under an interpreter that lacks the project (the
TorchRL venv): it registers bench/ as a bare package without executing bench/__init__.py,
and drops its own folder from sys.path so that no module here shadows a library.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
import types

MARK = "PEERS_JSON "


def _bootstrap():
    here = os.path.dirname(os.path.abspath(__file__))
    bench_dir = os.path.dirname(here)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    if "bench" not in sys.modules:
        pkg = types.ModuleType("bench")
        pkg.__path__ = [bench_dir]  # type: ignore[attr-defined]
        sys.modules["bench"] = pkg


def main(argv: list[str]) -> int:
    raw = argv[1] if len(argv) > 1 else "-"
    args = json.loads(sys.stdin.read() if raw == "-" else raw)
    # threads before any numeric library starts its pool
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = "1"
    if args.get("device", "cpu") == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    _bootstrap()
    try:
        from bench.peers._core import measure

        out = measure(**args)
    except MemoryError as e:
        out = {"error": f"MemoryError: {e}"}
    except Exception as e:  # reported, not raised: the parent prints it
        traceback.print_exc(file=sys.stderr)
        out = {"error": f"{type(e).__name__}: {e}"[:500]}
    sys.stdout.write("\n" + MARK + json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The one-command check for a GPU machine: tests, syncs, graphs, bit-exactness, benchmarks.

    python -m bench.gpu                  # on a CUDA machine (about 5-8 minutes with a warm Triton cache)
    python -m bench.gpu --cpu            # a dry run of the same script on the CPU (tiny sizes)

1. The CUDA tests, file by file, each under its own time limit (``tests/test_cuda.py``: no host
   sync in add/sample/update/step, the cycle captured in a CUDA graph and replayed, CPU <->
   CUDA checkpoints; ``tests/test_kernels.py`` and ``tests/test_per.py``: the compiled Triton
   kernels against their torch twins, bit for bit, on the device).
2. The GPU benchmark, in one run, median µs (CUDA events): gpu_replay's cycle at capacity 1e6,
   B = 1024 (add 16 + sample + update), eager and captured in a CUDA graph; sample and update
   at 1e6 and 1e8; the same ops for the peers that import here (a torch cumsum + searchsorted
   baseline always; flashbax through JAX and TorchRL's CUDA tree when their wheels are carried,
   see the README); a frame gather (84x84x4 uint8 obs and next_obs) against a device-to-device
   copy of the same bytes.
3. Writes bench/results/<gpu>-<date>-<time>.json (a new file) and prints a summary.

``TRITON_CACHE_DIR`` defaults to ``.triton-cache/`` in the repository (git-ignored), so a second
command on the same machine skips the compiles.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(ROOT, ".triton-cache"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

TEST_FILES = [("tests/test_cuda.py", 240), ("tests/test_kernels.py", 240), ("tests/test_per.py", 240),
              ("tests/test_checkpoint.py", 120), ("tests/test_nstep.py", 120), ("tests/test_promises.py", 180)]


def run_tests(limit_scale: float) -> list[dict]:
    out = []
    for path, limit in TEST_FILES:
        t0 = time.time()
        try:
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", path],
                               cwd=ROOT, capture_output=True, text=True, timeout=limit * limit_scale)
            tail = (r.stdout + r.stderr).strip().splitlines()[-1:] or [""]
            summary = tail[0]
            ok = r.returncode == 0
        except subprocess.TimeoutExpired:
            summary, ok = f"timed out after {limit * limit_scale:.0f} s", False
        counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error)", summary)}
        out.append({"file": path, "ok": ok, "seconds": round(time.time() - t0, 1), "summary": summary, **counts})
        print(f"  {path}: {summary} ({time.time() - t0:.0f} s)", flush=True)
    return out


def timed(fn, device, repeats=50, warmup=10) -> float:
    from bench.core import timeit
    return timeit(fn, device, repeats, warmup)


def bench_gpu_replay(device, capacities, B) -> dict:
    from bench.__main__ import graph_cycle_us
    from bench.peers._core import fill_chunks, spec
    from gpu_replay import PrioritizedReplayBuffer
    dev = torch.device(device)
    out = {}
    tspec = {k: (s, torch.from_numpy(np.empty(0, d)).dtype) for k, (s, d) in spec("vec8").items()}
    for cap in capacities:
        try:
            rb = PrioritizedReplayBuffer(cap, tspec, device=dev)
            for rows, td in fill_chunks("vec8", cap):
                keys = rb.add({k: torch.from_numpy(np.ascontiguousarray(v)).to(dev) for k, v in rows.items()})
                rb.update_priorities(keys, torch.from_numpy(td).to(dev))
            td = torch.rand(B, device=dev)
            s = rb.sample(B)
            out[f"sample({B}) at {cap:.0e}"] = timed(lambda: rb.sample(B, beta=0.4), dev)
            out[f"update({B}) at {cap:.0e}"] = timed(lambda: rb.update_priorities(s.keys, td), dev)
            out[f"tree check at {cap:.0e}"] = rb.tree.check()
            del rb
        except (RuntimeError, MemoryError) as e:  # out of memory at the largest capacity
            out[f"skipped {cap:.0e}"] = str(e)[:200]
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if dev.type == "cuda":
        cyc = graph_cycle_us(capacities[0], B, device, "vec8")
        out.update({f"cycle({B}) eager at {capacities[0]:.0e}": cyc["eager_us"],
                    f"cycle({B}) CUDA graph at {capacities[0]:.0e}": cyc["graph_us"], "cycle tree ok": cyc["tree_ok"]})
    return out


def bench_peers(device, capacity, B) -> dict:
    from bench import peers as P
    names = [n for n, e in P.REGISTRY.items() if ("cuda" if device.startswith("cuda") else "cpu") in e.devices]
    out = {}
    for name in names:
        res = P.time_peer(name, capacity, [B], ops=["sample", "update", "cycle"], repeats=30, spec_kind="vec8",
                          max_seconds=2.0, device=device, meta={})
        out[name] = res
        print(f"  {name}: {res}", flush=True)
    return out


def bench_frames(device, capacity, B) -> dict:
    """A gather of frame rows (obs and next_obs) against a device-to-device copy of as many bytes."""
    from gpu_replay import ReplayBuffer
    dev = torch.device(device)
    spec = {"obs": ((84, 84, 4), torch.uint8), "next_obs": ((84, 84, 4), torch.uint8), "action": ((), torch.int64)}
    rb = ReplayBuffer(capacity, spec, device=dev)
    chunk = {k: torch.randint(0, 255, (1024, *s), dtype=d, device=dev) if d == torch.uint8 else
             torch.zeros((1024, *s), dtype=d, device=dev) for k, (s, d) in spec.items()}
    for _ in range(capacity // 1024):
        rb.add(chunk)
    nbytes = B * 2 * 84 * 84 * 4
    src = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    t_gather = timed(lambda: rb.sample(B), dev)
    t_copy = timed(lambda: dst.copy_(src), dev)
    return {"gather_us": t_gather, "copy_us": t_copy, "bytes": nbytes,
            "gather_GBps": nbytes * 2 / t_gather / 1e3, "copy_GBps": nbytes * 2 / t_copy / 1e3,
            "gather_vs_copy": t_copy / t_gather}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="a dry run on the CPU, tiny sizes")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "bench", "results"))
    args = ap.parse_args(argv)
    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    if device == "cpu" and not args.cpu:
        print("no CUDA device: running the CPU dry run (--cpu)")
    torch.set_num_threads(1)
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu-{platform.machine()}"
    import triton
    res = {"device": name, "date": datetime.date.today().isoformat(), "torch": torch.__version__,
           "triton": triton.__version__, "numpy": np.__version__, "python": platform.python_version(),
           "triton_cache": os.environ["TRITON_CACHE_DIR"], "dry_run": device == "cpu"}
    t0 = time.time()
    if not args.skip_tests:
        print("tests:", flush=True)
        res["tests"] = run_tests(1.0 if device == "cuda" else 2.0)
    caps = [10 ** 6, 10 ** 8] if device == "cuda" else [10 ** 4]
    B = 1024 if device == "cuda" else 64
    print("gpu_replay:", flush=True)
    res["gpu_replay"] = bench_gpu_replay(device, caps, B)
    print(f"  {res['gpu_replay']}", flush=True)
    print("peers:", flush=True)
    res["peers"] = bench_peers(device, caps[0], B)
    print("frames:", flush=True)
    res["frames"] = bench_frames(device, 100_000 if device == "cuda" else 2048, 256 if device == "cuda" else 16)
    print(f"  {res['frames']}", flush=True)
    res["seconds"] = round(time.time() - t0, 1)
    os.makedirs(args.out_dir, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    path = os.path.join(args.out_dir, f"{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}-{stamp}.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1, default=str)
    failed = [t["file"] for t in res.get("tests", []) if not t["ok"]]
    print(f"wrote {path} ({res['seconds'] / 60:.1f} min); " + (f"FAILED: {failed}" if failed else "tests ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

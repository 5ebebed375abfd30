"""Soak: millions of mixed add / sample / update calls on a small buffer, checking the tree.

    python -m bench.soak --ops 10000000          # the full run (minutes)
    python -m bench.soak --ops 20000 --check-every 500   # what CI runs (tests/test_soak.py)

Calls are drawn at random (add 30 %, sample 35 %, update 35 %), updates mix live, stale,
future and duplicate keys with NaN/inf/negative TD errors. Every ``--check-every`` calls
the tree is compared with a float64 recomputation from its leaves and every sampled row
with the row of its key; each mismatch counts as a violation (must be 0). Prints ops/s and
writes bench/results/soak-<device>-<date>.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

import numpy as np
import torch

from gpu_replay import PrioritizedReplayBuffer


def soak(ops: int, capacity: int = 1000, check_every: int = 10_000, backend: str = "auto", device: str = "cpu",
         seed: int = 0, progress: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    dev = torch.device(device)
    rb = PrioritizedReplayBuffer(capacity, {"key": ((), torch.int64), "obs": ((4,), torch.float32)}, device=dev,
                                 backend=backend, fanout=8, generator=torch.Generator(device=dev).manual_seed(seed))
    violations = {"tree": 0, "row": 0, "zero_priority_sampled": 0}
    counts = {"add": 0, "sample": 0, "update": 0}
    kinds = rng.choice(3, size=ops, p=[0.30, 0.35, 0.35])
    last_keys = None
    t0 = time.perf_counter()
    next_report = t0 + 10
    for i in range(ops):
        added = rb.sampler.counter.added()  # the next key
        kind = kinds[i] if added else 0
        if kind == 0:
            n = int(rng.integers(1, 65))
            k = torch.arange(added, added + n)
            valid = torch.from_numpy(rng.random(n) > 0.05)
            rb.add({"key": k.to(dev), "obs": k.float()[:, None].repeat(1, 4).to(dev)}, valid=valid.to(dev))
            counts["add"] += 1
        elif kind == 1:
            try:
                s = rb.sample(int(rng.integers(1, 129)), beta=float(rng.random()))
            except ValueError:
                continue
            last_keys = s.keys
            counts["sample"] += 1
            if (i % check_every) < 3:
                if not torch.equal(s["key"], s.keys):
                    violations["row"] += 1
                if not bool((s.priorities > 0).all()):
                    violations["zero_priority_sampled"] += 1
        else:
            B = int(rng.integers(1, 129))
            lo = added - capacity - 5
            keys = torch.from_numpy(rng.integers(lo, added + 3, size=B))
            if last_keys is not None and rng.random() < 0.5:
                m = min(B, last_keys.shape[0])
                keys[:m] = last_keys[:m].cpu()
            td = torch.from_numpy(rng.standard_normal(B).astype(np.float32) * 10)
            td[rng.random(B) < 0.02] = float("nan")
            td[rng.random(B) < 0.01] = float("inf")
            rb.update_priorities(keys.to(dev), td.to(dev))
            counts["update"] += 1
        if (i + 1) % check_every == 0:
            if rb.tree.check() != 0.0:
                violations["tree"] += 1
        if progress and time.perf_counter() > next_report:
            el = time.perf_counter() - t0
            print(f"  {i + 1:,}/{ops:,} calls, {(i + 1) / el:,.0f} calls/s, violations {violations}", flush=True)
            next_report += 10
    if rb.tree.check() != 0.0:
        violations["tree"] += 1
    elapsed = time.perf_counter() - t0
    return {"ops": ops, "calls": counts, "seconds": elapsed, "ops_per_s": ops / elapsed,
            "violations": violations, "total_violations": sum(violations.values()), "stats": rb.stats(),
            "backend": rb.backend, "capacity": capacity}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=10_000_000)
    ap.add_argument("--capacity", type=int, default=1000)
    ap.add_argument("--check-every", type=int, default=10_000)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    res = soak(args.ops, args.capacity, args.check_every, args.backend, args.device)
    dev_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu-{platform.machine()}"
    res.update(device=dev_name, date=datetime.date.today().isoformat(), torch=torch.__version__)
    print(json.dumps(res, indent=1))
    out = args.out or os.path.join(os.path.dirname(__file__), "results",
                                   f"soak-{dev_name.replace(' ', '_')}-{res['date']}.json")
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print("wrote", out)
    return res


if __name__ == "__main__":
    main()

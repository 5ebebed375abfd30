"""Overhead of the sharded buffer on Gloo/CPU: one learning step = sample(B) + update(B).

    python -m bench.distributed                          # 2 and 4 processes, B = 256
    python -m bench.distributed --world 2 4 --batch 256 1024 --iters 400

In one run, for each world size W (forked processes, one torch thread each, one Gloo group)
and each B, every rank holds a full shard of ``--capacity`` rows (the bench.core transition:
obs float32[8], action int64, reward float32, next_obs float32[8], done bool; heavy-tailed
priorities) and times, per call, with perf_counter:

- ``local``: each rank samples and updates only its own shard (``rb.local``): no
  communication, no global prioritization: what sharded setups do today;
- ``sharded``: every rank a learner: ``sample(B)`` over the union + ``update_priorities``
  (routed to the owners), and the two halves alone;
- ``sharded_dst0``: one learner: ``sample(B, dst=0)`` + rank 0's update (the others pass none);
- ``one_gather``: the buffer's gather of 6 float64 (one ``all_to_all_single``: the latency
  floor of one collective; a sample makes 2 collectives, an update 2), back to back;
  ``compute300_then_gather``: 300 µs of compute on every rank, then the same gather (a
  collective inside a pipeline: with as many busy processes as cores, Gloo's I/O threads
  wait for a core); ``all_gather_ring``: the gather with Gloo's ``all_gather`` (a ring);
- ``rows_packed`` / ``rows_per_field``: moving B rows of every field between the ranks with
  one ``all_to_all_single`` of packed uint8 rows, against one per field.

Medians over ``--iters`` calls per rank, the ops taking turns in 10 rounds (a shared machine's
slow drifts hit them alike); the JSON keeps every rank's median and the max over ranks
(collectives make every rank wait for the slowest). Writes a new file
bench/results/distributed-gloo-<machine>-<date>[-n].json (never overwrites one).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import platform
import shutil
import statistics
import tempfile
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gpu_replay
from gpu_replay import PrioritizedReplayBuffer
from gpu_replay.distributed import ShardedPrioritizedReplayBuffer

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
SPEC = {"obs": ((8,), torch.float32), "action": ((), torch.int64), "reward": ((), torch.float32),
        "next_obs": ((8,), torch.float32), "done": ((), torch.bool)}


def make_rows(n: int, g: torch.Generator) -> dict:
    return {"obs": torch.randn(n, 8, generator=g), "action": torch.randint(0, 4, (n,), generator=g),
            "reward": torch.randn(n, generator=g), "next_obs": torch.randn(n, 8, generator=g),
            "done": torch.rand(n, generator=g) < 0.01}


def timed_interleaved(ops: dict, iters: int, warmup: int, rounds: int = 10) -> dict:
    """Median µs per call of each op, the ops taking turns in ``rounds`` rounds of
    iters / rounds calls each (slow drifts of a shared machine hit every op alike). Every rank
    runs the same sequence (the collective ops need it)."""
    for fn in ops.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in ops}
    per = max(1, iters // rounds)
    for _ in range(rounds):
        for name, fn in ops.items():
            dist.barrier()
            for _ in range(per):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) * 1e6 for name, ts in times.items()}


def worker_body(rank: int, ws: int, capacity: int, batch_sizes: list[int], iters: int, warmup: int) -> dict:
    rb = ShardedPrioritizedReplayBuffer(capacity, SPEC, seed=0)
    g = torch.Generator().manual_seed(rank)
    chunk = 1 << 14
    for start in range(0, capacity, chunk):
        rb.add(make_rows(min(chunk, capacity - start), g))
    live = torch.arange(capacity, dtype=torch.int64) * ws + rank
    rb.update_priorities(live, torch.exp(torch.randn(capacity, generator=g) * 2))  # heavy-tailed
    out = {}
    local = rb.local
    for B in batch_sizes:
        td = torch.randn(B, generator=g).abs()

        def local_step():
            s = local.sample(B, beta=0.4)
            local.update_priorities(s.keys, td)

        def sharded_step():
            s = rb.sample(B, beta=0.4)
            rb.update_priorities(s.keys, td)

        def sharded_dst0_step():
            s = rb.sample(B, beta=0.4, dst=0)
            if s is None:
                rb.update_priorities()
            else:
                rb.update_priorities(s.keys, td)

        s_keys = rb.sample(B, beta=0.4).keys
        vec = torch.zeros(6, dtype=torch.float64)
        gathered = torch.empty(6 * ws, dtype=torch.float64)
        # moving B rows between ranks (an even split): packed uint8 rows vs one collective per field
        n = B - B % ws
        rows = local.storage.gather(torch.arange(n))
        width = 16 + sum(t[0].numel() * t.element_size() for t in rows.values())
        packed = torch.zeros(n, width, dtype=torch.uint8)
        packed_out = torch.empty_like(packed)
        per_field = [(torch.empty_like(t), t.contiguous()) for t in rows.values()]
        def busy(us: float = 300.0):
            t = time.perf_counter()
            while time.perf_counter() - t < us * 1e-6:
                pass

        ops = {
            "local": local_step,
            "local_sample": lambda: local.sample(B, beta=0.4),
            "sharded": sharded_step,
            "sharded_sample": lambda: rb.sample(B, beta=0.4),
            "sharded_update": lambda: rb.update_priorities(s_keys, td),
            "sharded_dst0": sharded_dst0_step,
            "one_gather": lambda: rb._gather(vec),  # what the buffer uses (one all_to_all on Gloo)
            "all_gather_ring": lambda: dist.all_gather_single(gathered, vec),
            "compute300_then_gather": lambda: (busy(), rb._gather(vec)),  # a collective inside a pipeline
            "rows_packed": lambda: dist.all_to_all_single(packed_out, packed),
            "rows_per_field": lambda: [dist.all_to_all_single(o, i) for o, i in per_field],
        }
        out[B] = timed_interleaved(ops, iters, warmup)
    return out


def _entry(rank, ws, init, outdir, args):
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=ws, timeout=timedelta(seconds=120))
        try:
            res = ("ok", worker_body(rank, ws, *args))
        finally:
            dist.destroy_process_group()
    except BaseException:  # noqa: BLE001
        res = ("err", traceback.format_exc())
    with open(os.path.join(outdir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(res, f)
    if res[0] == "err":
        raise SystemExit(1)


def run_world(ws: int, args) -> list[dict]:
    outdir = tempfile.mkdtemp(prefix="bench_dist_")
    try:
        init = "file://" + os.path.join(outdir, "store")
        mp.start_processes(_entry, args=(ws, init, outdir, (args.capacity, args.batch, args.iters, args.warmup)),
                           nprocs=ws, start_method="fork")
        res = []
        for r in range(ws):
            with open(os.path.join(outdir, f"rank{r}.pkl"), "rb") as f:
                status, val = pickle.load(f)
            if status != "ok":
                raise RuntimeError(f"rank {r} failed:\n{val}")
            res.append(val)
        return res
    finally:
        shutil.rmtree(outdir, ignore_errors=True)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def new_path(stem: str) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{stem}.json")
    n = 2
    while os.path.exists(path):
        path = os.path.join(RESULTS, f"{stem}-{n}.json")
        n += 1
    return path


def main() -> None:
    p = argparse.ArgumentParser(description="sharded buffer overhead on Gloo/CPU")
    p.add_argument("--world", type=int, nargs="+", default=[2, 4])
    p.add_argument("--batch", type=int, nargs="+", default=[256])
    p.add_argument("--capacity", type=int, default=1 << 16, help="rows per shard")
    p.add_argument("--iters", type=int, default=400)
    p.add_argument("--warmup", type=int, default=30)
    args = p.parse_args()
    torch.set_num_threads(1)
    # compile the numba ops here: the forked ranks inherit them
    warm = PrioritizedReplayBuffer(64, SPEC)
    k = warm.add(make_rows(8, torch.Generator().manual_seed(0)))
    warm.update_priorities(k, torch.ones(8))
    warm.sample(4)
    warm.tree.find(torch.tensor([0.5], dtype=torch.float64))
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    results = []
    for ws in args.world:
        print(f"world size {ws} ...", flush=True)
        per_rank = run_world(ws, args)
        for B in args.batch:
            row = {"world_size": ws, "batch_size": B}
            for op in per_rank[0][B]:
                meds = [r[B][op] for r in per_rank]
                row[op] = {"median_us_max_rank": max(meds), "median_us_per_rank": meds}
            row["ratio_sharded_vs_local"] = row["sharded"]["median_us_max_rank"] / row["local"]["median_us_max_rank"]
            row["ratio_dst0_vs_local"] = row["sharded_dst0"]["median_us_max_rank"] / row["local"]["median_us_max_rank"]
            results.append(row)
            print(f"  B={B:5d}  local {row['local']['median_us_max_rank']:8.1f} µs   sharded "
                  f"{row['sharded']['median_us_max_rank']:8.1f} µs (x{row['ratio_sharded_vs_local']:.2f}; sample "
                  f"{row['sharded_sample']['median_us_max_rank']:.1f} + update "
                  f"{row['sharded_update']['median_us_max_rank']:.1f})   one learner "
                  f"{row['sharded_dst0']['median_us_max_rank']:8.1f} µs (x{row['ratio_dst0_vs_local']:.2f})   "
                  f"1 gather {row['one_gather']['median_us_max_rank']:.1f} µs (ring all_gather "
                  f"{row['all_gather_ring']['median_us_max_rank']:.1f})   rows packed "
                  f"{row['rows_packed']['median_us_max_rank']:.1f} vs per field "
                  f"{row['rows_per_field']['median_us_max_rank']:.1f} µs", flush=True)
    machine = f"cpu-{platform.machine()}-{os.cpu_count()}cores"
    date = datetime.date.today().isoformat()
    out = {"device": machine, "cpu": cpu_model(), "backend": "gloo", "date": date,
           "python": platform.python_version(), "torch": torch.__version__, "gpu_replay": gpu_replay.__version__,
           "shard_backend": warm.backend,
           "capacity_per_rank": args.capacity, "iters": args.iters, "warmup": args.warmup,
           "notes": "median µs per call on each rank (one torch thread per process, forked, one Gloo group); "
                    "the max over ranks is quoted. local = each rank samples/updates only its own shard; "
                    "sharded = sample(B) over the union on every rank + routed update_priorities; "
                    "sharded_dst0 = one learner (rank 0). With more processes than cores the ranks share cores. "
                    "loadavg: the machine's load before/after (another job on the machine inflates the numbers).",
           "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
           "results": results, "seconds": time.perf_counter() - t0}
    path = new_path(f"distributed-gloo-{machine}-{date}")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {os.path.relpath(path)}")


if __name__ == "__main__":
    main()

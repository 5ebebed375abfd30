"""Median microseconds per NStep.step(), for num_envs in {1, 64, 1024}, with an 8-float32
observation and an 84x84x4 uint8 observation (n=3, gamma=0.99, next-step autoreset, ~2% of
steps ending an episode, inputs already on the device).

    python bench/nstep.py [--device cpu|cuda] [--n 3] [--budget 4]

CPU timings use one torch thread and wall-clock time; on CUDA each step is timed with CUDA
events (device time of the launched work, inputs resident on the GPU).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpu_replay.nstep import NStep  # noqa: E402


def make_inputs(E, obs_shape, obs_dtype, device, count, gen):
    out = []
    for _ in range(count):
        if obs_dtype == torch.uint8:
            obs = torch.randint(0, 256, (E, *obs_shape), dtype=torch.uint8, generator=gen)
            nxt = torch.randint(0, 256, (E, *obs_shape), dtype=torch.uint8, generator=gen)
        else:
            obs = torch.randn(E, *obs_shape, generator=gen)
            nxt = torch.randn(E, *obs_shape, generator=gen)
        u = torch.rand(E, generator=gen)
        kw = dict(obs=obs, action=torch.randint(0, 6, (E,), generator=gen), reward=torch.randn(E, generator=gen),
                  next_obs=nxt, terminated=u < 0.015, truncated=(u >= 0.015) & (u < 0.02))
        out.append({k: v.to(device) for k, v in kw.items()})
    return out


def bench_one(E, obs_shape, obs_dtype, device, n, budget_s, max_iters=2000):
    gen = torch.Generator().manual_seed(0)
    inputs = make_inputs(E, obs_shape, obs_dtype, device, 4, gen)
    ns = NStep(E, n, 0.99, device=device)
    for i in range(max(n + 2, 5)):  # warm-up: past the first n-1 calls, allocator warmed
        ns.step(**inputs[i % len(inputs)])
    times = []
    cuda = device.type == "cuda"
    t_end = time.perf_counter() + budget_s
    i = 0
    while (i < 10 or time.perf_counter() < t_end) and i < max_iters:
        kw = inputs[i % len(inputs)]
        if cuda:
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            ns.step(**kw)
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) * 1e3)
        else:
            t0 = time.perf_counter()
            ns.step(**kw)
            times.append((time.perf_counter() - t0) * 1e6)
        i += 1
    return statistics.median(times), len(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--budget", type=float, default=4.0, help="seconds of timing per configuration")
    args = ap.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    obs_kinds = [("8 x float32", (8,), torch.float32), ("84x84x4 uint8", (84, 84, 4), torch.uint8)]
    print(f"NStep.step median us/call: device={device} ({'CUDA events' if device.type == 'cuda' else 'wall clock'}), "
          f"n={args.n}, torch {torch.__version__}, threads={torch.get_num_threads()}")
    header = f"| {'num_envs':>8} | " + " | ".join(f"{name:>17}" for name, _, _ in obs_kinds) + " |"
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for E in (1, 64, 1024):
        cells = []
        for _, shape, dt in obs_kinds:
            med, iters = bench_one(E, shape, dt, device, args.n, args.budget)
            cells.append(f"{med:>10.1f} ({iters:>4})")
        print(f"| {E:>8} | " + " | ".join(f"{c:>17}" for c in cells) + " |", flush=True)
    print("(in parentheses: timed calls)")


if __name__ == "__main__":
    main()

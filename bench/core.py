"""First, small benchmark: median µs of sample / update / add for each available backend.

    python -m bench.core                     # capacity 1e6, B in {256, 1024}
    python -m bench.core --fanout 8 16 32 64 # compare fanouts

Transitions: obs float32[8], action int64, reward float32, next_obs float32[8], done bool
(the setup of ../shared/PEERS.md, the project brief beside the repository). sample() includes gathering every field and the IS weights; update()
takes raw TD errors; the buffer is full before timing. CPU timings use perf_counter with
one torch thread; CUDA timings use CUDA events around each call.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from gpu_replay import PrioritizedReplayBuffer, kernels

SPEC = {"obs": ((8,), torch.float32), "action": ((), torch.int64), "reward": ((), torch.float32),
        "next_obs": ((8,), torch.float32), "done": ((), torch.bool)}


def make_batch(n: int, device) -> dict:
    g = torch.Generator().manual_seed(n)
    return {"obs": torch.randn(n, 8, generator=g), "action": torch.randint(0, 4, (n,), generator=g),
            "reward": torch.randn(n, generator=g), "next_obs": torch.randn(n, 8, generator=g),
            "done": torch.rand(n, generator=g) < 0.01}


def timeit(fn, device: torch.device, repeats: int, warmup: int = 5) -> float:
    """Median µs of fn() over repeats calls."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        for _ in range(repeats):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) * 1e3)
    else:
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e6)
    return statistics.median(times)


def capture_graph(fn, warmup: int = 3):
    """``fn`` warmed up on a side stream (as torch requires before a capture), then captured in a
    CUDA graph; returns (the graph, what the captured call returned). ``graph.replay()`` runs it
    again, with the buffer's device-side state (keys, counters, priorities) moving on."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    return g, out


def filled_buffer(capacity: int, device, backend: str, fanout: int) -> PrioritizedReplayBuffer:
    rb = PrioritizedReplayBuffer(capacity, SPEC, device=device, backend=backend, fanout=fanout,
                                 generator=torch.Generator(device=device).manual_seed(0))
    chunk = make_batch(min(capacity, 1 << 16), "cpu")
    chunk = {k: v.to(device) for k, v in chunk.items()}
    n = 0
    while n < capacity:
        rb.add(chunk)
        n += chunk["obs"].shape[0]
    g = torch.Generator().manual_seed(1)
    keys = torch.arange(max(0, n - capacity), n, device=device)
    rb.update_priorities(keys, torch.randn(keys.shape[0], generator=g).to(device))
    return rb


def bench_backend(capacity: int, device: torch.device, backend: str, fanout: int, batch_sizes, repeats: int):
    rb = filled_buffer(capacity, device, backend, fanout)
    out = {}
    g = torch.Generator().manual_seed(2)
    for B in batch_sizes:
        td = torch.randn(B, generator=g).abs().to(device)
        add_b = {k: v.to(device) for k, v in make_batch(B, "cpu").items()}
        s = rb.sample(B, beta=0.4)
        keys = s.keys
        out[B] = {
            "sample": timeit(lambda: rb.sample(B, beta=0.4), device, repeats),
            "update": timeit(lambda: rb.update_priorities(keys, td), device, repeats),
            "add": timeit(lambda: rb.add(add_b), device, repeats),
        }
    assert rb.tree.check() == 0.0
    return out


def available_backends(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["triton", "torch"] if kernels.available("triton") else ["torch"]
    return ["numba", "torch"] if kernels.available("numba") else ["torch"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--capacity", type=float, default=1e6)
    ap.add_argument("--batch", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--fanout", type=int, nargs="+", default=[None])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device(args.device)
    cap = int(args.capacity)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU, 1 torch thread"
    print(f"# gpu_replay core benchmark: capacity {cap:,}, device {name}, torch {torch.__version__}")
    print("| backend | fanout | B | sample µs | update µs | add µs |")
    print("|---|---:|---:|---:|---:|---:|")
    from gpu_replay.sumtree import DEFAULT_FANOUT
    for backend in available_backends(device):
        for fanout in args.fanout:
            fanout = fanout or DEFAULT_FANOUT
            res = bench_backend(cap, device, backend, fanout, args.batch, args.repeats)
            for B, r in res.items():
                print(f"| {backend} | {fanout} | {B} | {r['sample']:.0f} | {r['update']:.0f} | {r['add']:.0f} |",
                      flush=True)


if __name__ == "__main__":
    main()

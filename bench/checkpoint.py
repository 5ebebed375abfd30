"""Checkpoint speed: save() and load() of a full prioritized buffer.

    python -m bench.checkpoint --capacity 1000000

Rows: obs float32[8], action int64, reward float32, next_obs float32[8], done bool (as in
bench/core.py), buffer full, file on the local disk (fsync included). Prints median seconds.
"""
import argparse
import os
import statistics
import tempfile
import time

import torch

from bench.core import filled_buffer
from gpu_replay import PrioritizedReplayBuffer


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--capacity", type=float, default=1e6)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    dev = torch.device(args.device)
    rb = filled_buffer(int(args.capacity), dev, "auto", 16)
    other = PrioritizedReplayBuffer(rb.capacity, rb.spec, device=dev)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "buf.ckpt")
        saves, loads = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            rb.save(path)
            saves.append(time.perf_counter() - t)
            t = time.perf_counter()
            other.load(path)
            loads.append(time.perf_counter() - t)
        size = os.path.getsize(path)
    assert other.tree.check() == 0.0 and len(other) == len(rb)
    print(f"capacity {rb.capacity:,} on {dev}: file {size / 2**20:.0f} MiB, "
          f"save {statistics.median(saves):.3f} s, load {statistics.median(loads):.3f} s (median of {args.repeats})")


if __name__ == "__main__":
    main()

"""A short demo of the buffer: python -m gpu_replay [--device cuda]."""
import argparse
import time

import torch

from gpu_replay import PrioritizedReplayBuffer, linear_beta

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
ap.add_argument("--capacity", type=int, default=100_000)
args = ap.parse_args()
torch.set_num_threads(1)
dev = torch.device(args.device)
spec = {"obs": ((8,), torch.float32), "action": ((), torch.int64), "reward": ((), torch.float32),
        "next_obs": ((8,), torch.float32), "done": ((), torch.bool)}
rb = PrioritizedReplayBuffer(args.capacity, spec, device=dev, generator=torch.Generator(device=dev).manual_seed(0))
print(f"PrioritizedReplayBuffer(capacity={args.capacity:,}) on {dev}, backend={rb.backend}, "
      f"tree depth {rb.tree.state.depth} at fanout {rb.tree.fanout}, {rb.nbytes / 2**20:.1f} MiB of rows")
for it in range(2010):
    if it == 10:  # after a warm-up (numba compiles its loops on first use)
        t0 = time.perf_counter()
    n = 64
    rb.add({"obs": torch.randn(n, 8, device=dev), "action": torch.randint(0, 4, (n,), device=dev),
            "reward": torch.randn(n, device=dev), "next_obs": torch.randn(n, 8, device=dev),
            "done": torch.rand(n, device=dev) < 0.02})
    s = rb.sample(256, beta=linear_beta(it, 2000))
    td = s["reward"] + 0.99 * s["next_obs"].sum(1) - s["obs"].sum(1)  # a stand-in TD error
    rb.update_priorities(s.keys, td)
if dev.type == "cuda":
    torch.cuda.synchronize()
dt = time.perf_counter() - t0
print(f"2000 cycles of add(64) + sample(256) + update(256): {dt:.2f} s ({dt / 2000 * 1e6:.0f} µs per cycle)")
p = rb.tree.leaves[:len(rb)]
print(f"stored {len(rb):,} rows; priorities from {float(p.min()):.3g} to {float(p.max()):.3g} "
      f"(p = (|td| + eps) ** 0.6)")
w = s.weights
print(f"IS weights of the last batch (beta = 1.0): w_i = (p_i / p_min) ** -beta, normalized by the buffer's\n"
      f"  least likely row, which gets 1.0; rows sampled often get small weights: here {float(w.min()):.4f} to "
      f"{float(w.max()):.4f}, mean {float(w.mean()):.4f}")
print("  (normalize='batch' divides by the batch's max weight instead: the batch's least likely row gets 1.0)")
print("counters:", rb.stats(), "| tree vs float64 recomputation, max rel. error:", rb.tree.check())

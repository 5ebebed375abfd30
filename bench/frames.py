"""Frames once against the naive layout, in one run: bytes per transition, sample(B), step and
add speed, for Atari-shaped transitions (84x84 uint8 frames, stack 4, n-step 3, 8 envs,
next-step autoreset, prioritized replay).

    python bench/frames.py [--capacity 100000] [--device cpu|cuda] [--batch 256] [--budget 3]

Both buffers are ``PrioritizedReplayBuffer``s fed the same ``step()`` stream (the naive one
stores obs and next_obs as full stacks; the other has ``frame_stack=4``), filled past their
capacity, then timed alternately (A, B, A, B...: the noise of a shared machine hits both), in
``--rounds`` rounds (the JSON keeps each round's medians and their median):

- ``sample(B)``: median per call (the same generator seed on both: the same rows are drawn,
  and their obs/next_obs are checked bit-identical);
- ``step``: median per ``step()`` call of 8 envs (host numpy inputs, as gymnasium gives);
- ``add``: the naive buffer's ``add`` of 8 full rows (a frame buffer is fed by ``step`` only);
- bytes per transition: ``nbytes`` / capacity at the run's capacity, and at 1e6 rows from the
  same buffers built on torch's meta device (every tensor allocated, no memory).

CPU timings use one torch thread; CUDA timings use CUDA events. Writes a new JSON file to
bench/results/ (never overwrites).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpu_replay import PrioritizedReplayBuffer  # noqa: E402

HERE = Path(__file__).resolve().parent
H = W = 84
S, N, E = 4, 3, 8
PEERS = {  # bytes per Atari transition (84x84 uint8, stack 4), per the peers' own code (the issue)
    "SB3 default / CleanRL / TorchRL, stacked obs": 56448,
    "SB3 optimize_memory_usage (breaks with timeouts, n-step)": 28224,
    "flashbax flat buffer": 28224,
    "TorchRL CatFrames recipe": 14112,
    "cpprb next_of + stack_compress (no n-step)": 7056,
    "Dopamine circular buffer (CPU, one env, removed 2024)": 7056,
}


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu-{platform.machine()}-{os.cpu_count()}cores"


class Stream:
    """8 envs behind a FrameStackObservation, next-step autoreset, ~1/400 steps ending an
    episode; frames drawn from a pool of random frames."""

    def __init__(self, seed=0):
        self.g = np.random.default_rng(seed)
        self.pool = self.g.integers(0, 256, (4096, H, W), dtype=np.uint8)
        self.i = 0
        self.stacks = np.stack([self.reset_stack() for _ in range(E)])
        self.prev_done = np.zeros(E, dtype=bool)

    def frame(self):
        self.i += 1
        return self.pool[self.i % len(self.pool)]

    def reset_stack(self):
        return np.stack([self.frame()] * S)

    def step(self):
        obs = self.stacks
        nxt = np.empty_like(obs)
        nxt[:, :-1] = obs[:, 1:]
        for e in range(E):
            nxt[e, -1] = self.frame()
        u = self.g.random(E)
        te, tr = u < 0.002, (u >= 0.002) & (u < 0.0025)
        for e in np.flatnonzero(self.prev_done):
            nxt[e] = self.reset_stack()
            te[e] = tr[e] = False
        self.prev_done = te | tr
        self.stacks = nxt
        return dict(obs=obs, action=self.g.integers(0, 6, E), reward=self.g.standard_normal(E), next_obs=nxt,
                    terminated=te, truncated=tr)


def timed(fn, device):
    if device.startswith("cuda"):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        return a.elapsed_time(b) * 1e3
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e6


def alternate(fa, fb, device, budget_s, min_reps=20):
    """Median microseconds of fa and fb, called alternately until the budget is spent."""
    ta, tb = [], []
    end = time.perf_counter() + budget_s
    while len(ta) < min_reps or time.perf_counter() < end:
        ta.append(timed(fa, device))
        tb.append(timed(fb, device))
    return statistics.median(ta), statistics.median(tb), len(ta)


def per_row_at(capacity, frames):
    spec = {"obs": ((S, H, W), torch.uint8), "action": ((), torch.int64)}
    rb = PrioritizedReplayBuffer(capacity, spec, device="meta", n_step=N, num_envs=E,
                                 frame_stack=S if frames else None)
    return rb.nbytes / capacity


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--capacity", type=float, default=1e5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--budget", type=float, default=3.0, help="seconds of timing per op and round")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds (medians per round, then their median)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    C, B, dev = int(args.capacity), args.batch, args.device
    spec = {"obs": ((S, H, W), torch.uint8), "action": ((), torch.int64)}
    kw = dict(device=dev, n_step=N, gamma=0.99, num_envs=E)
    naive = PrioritizedReplayBuffer(C, spec, generator=torch.Generator(dev).manual_seed(0), **kw)
    frames = PrioritizedReplayBuffer(C, spec, generator=torch.Generator(dev).manual_seed(0), frame_stack=S, **kw)
    print(f"frames bench: {device_name(dev)}, capacity {C}, B={B}, torch {torch.__version__}", flush=True)

    # fill both with the same stream, past the capacity
    stream = Stream()
    calls = int(1.1 * C / E) + N
    t0 = time.perf_counter()
    for i in range(calls):
        kw_ = stream.step()
        naive.step(**kw_)
        frames.step(**kw_)
        if i % 2000 == 0:
            print(f"  fill {i}/{calls} ({time.perf_counter() - t0:.0f} s)", flush=True)

    # the same rows from both: check the rebuilt stacks bit for bit
    a, b = naive.sample(B), frames.sample(B)
    assert torch.equal(a.keys, b.keys), "the two buffers drew different rows"
    assert torch.equal(a["obs"], b["obs"]) and torch.equal(a["next_obs"], b["next_obs"]), "stacks differ"

    td = torch.rand(B, device=dev)
    rows = {k: v[:E].clone() for k, v in naive.sample(E).fields.items()}
    rounds = []
    for rnd in range(args.rounds):  # each round: every op, A/B alternated; medians per round
        s_n, s_f, reps = alternate(lambda: naive.sample(B), lambda: frames.sample(B), dev, args.budget)
        # step: both buffers see the same inputs, in the same order (the stream goes on)
        st_n, st_f = [], []
        end = time.perf_counter() + args.budget
        k = 0
        while k < 40 or time.perf_counter() < end:
            kw_ = stream.step()
            st_n.append(timed(lambda: naive.step(**kw_), dev))
            st_f.append(timed(lambda: frames.step(**kw_), dev))
            k += 1
        u_n, u_f, _ = alternate(lambda: naive.update_priorities(a.keys, td),
                                lambda: frames.update_priorities(b.keys, td), dev, args.budget / 3)
        add_n = statistics.median(timed(lambda: naive.add(rows), dev) for _ in range(300))
        r = {"sample": {"naive": s_n, "frames": s_f, "ratio": s_f / s_n, "reps": reps},
             "step": {"naive": statistics.median(st_n), "frames": statistics.median(st_f), "reps": k},
             "update": {"naive": u_n, "frames": u_f}, "add_8_rows": {"naive": add_n, "frames": None}}
        r["step"]["ratio"] = r["step"]["frames"] / r["step"]["naive"]
        rounds.append(r)
        print(f"  round {rnd}: sample {s_n:.0f} / {s_f:.0f} us (x{s_f / s_n:.2f}), step {r['step']['naive']:.0f} / "
              f"{r['step']['frames']:.0f} us (x{r['step']['ratio']:.2f}) [naive / frames]", flush=True)
    med = lambda op, who: statistics.median(r[op][who] for r in rounds)  # noqa: E731
    summary = {op: {"naive": med(op, "naive"), "frames": med(op, "frames") if op != "add_8_rows" else None}
               for op in ("sample", "step", "update", "add_8_rows")}
    for op in ("sample", "step", "update"):
        summary[op]["ratio"] = summary[op]["frames"] / summary[op]["naive"]
    mem = {"naive": naive.nbytes / C, "frames": frames.nbytes / C,
           "naive_1e6": per_row_at(10 ** 6, False), "frames_1e6": per_row_at(10 ** 6, True)}
    out = {
        "what": "frame storage (frame_stack=4) vs naive stacked obs/next_obs, PrioritizedReplayBuffer, n=3, "
                "8 envs, next-step autoreset, 84x84 uint8",
        "device": device_name(dev), "date": datetime.date.today().isoformat(),
        "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
        "threads": torch.get_num_threads(), "capacity": C, "batch": B,
        "bytes_per_transition": mem, "peers_bytes_per_transition": PEERS,
        "median_us": summary, "rounds": rounds,
        "sampled_rows_bit_identical": True,
    }
    print(json.dumps(summary, indent=1))
    print(f"bytes/transition at {C}: naive {mem['naive']:.0f}, frames {mem['frames']:.0f}; at 1e6: naive "
          f"{mem['naive_1e6']:.0f}, frames {mem['frames_1e6']:.0f}")
    os.makedirs(HERE / "results", exist_ok=True)
    name = f"frames-{device_name(dev).replace(' ', '_')}-{out['date']}"
    path = HERE / "results" / f"{name}.json"
    k = 2
    while path.exists():
        path = HERE / "results" / f"{name}-{k}.json"
        k += 1
    with open(path, "x") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Per-call overhead on the CPU: the small calls an agent makes every step, against the peers.

    python -m bench.overhead                 # every case, 3 rounds (~5 minutes), JSON + table
    python -m bench.overhead --repeats 500   # fewer timings per case and round

Cases (median µs per call, one thread, the garbage collector paused while timing; inputs are
numpy arrays, as a gymnasium env gives them):

- ``add(1)``, ``sample(32)``, ``update(32)`` at capacity 1e4 (a buffer that fits in cache:
  per-call overhead is all there is) and ``update(256)`` at 1e6; updates with the keys the
  previous sample returned ("sampled", fresh each call) and with fresh random live keys
  ("random");
- ``SB3 add``: stable-baselines3's ``ReplayBuffer.add`` against ``gpu_replay.compat.SB3ReplayBuffer.add``
  (the same arguments: obs float32[4], a Discrete action, n_envs 1 and 4);
- ``step(E)``: a 3-step return pipeline for E = 1, 4, 64 envs, obs float32[4]: gpu_replay's
  ``rb.step`` (n-step windows + prioritized add) against a Python deque n-step feeding cpprb's
  ``add`` (``bench.dqn.DequeNStep``), and cpprb's own ``Nstep`` (one stream: E = 1 only).

Peers: cpprb 11 (C++), tianshou 2 (numba), stable-baselines3 2.x; a missing one is reported
as skipped. Writes bench/results/overhead-<machine>-<date>-<time>.{json,md} (a new file each run).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

OBS = 4


def _median_us(fn, repeats: int, warmup: int = 200, setup=None) -> float:
    for _ in range(warmup):
        fn() if setup is None else fn(setup())
    times = []
    gc.disable()
    try:
        for _ in range(repeats):
            if setup is None:
                t = time.perf_counter()
                fn()
            else:
                arg = setup()
                t = time.perf_counter()
                fn(arg)
            times.append(time.perf_counter() - t)
    finally:
        gc.enable()
    return statistics.median(times) * 1e6


def _alternating_us(sample, update, repeats: int, warmup: int = 200) -> float:
    """update() timed alone, each after a fresh sample() (fresh keys, as in training)."""
    times = []
    for i in range(warmup + repeats):
        keys = sample()
        gc.disable()
        t = time.perf_counter()
        update(keys)
        dt = time.perf_counter() - t
        gc.enable()
        if i >= warmup:
            times.append(dt)
    return statistics.median(times) * 1e6


def rows(n: int, rng) -> dict:
    return {"obs": rng.standard_normal((n, 8), dtype=np.float32), "action": rng.integers(0, 4, n),
            "reward": rng.standard_normal(n).astype(np.float32), "next_obs": rng.standard_normal((n, 8), dtype=np.float32),
            "done": rng.random(n) < 0.01}


# ----------------------------------------------------------------------------- PER calls
def per_gpu_replay(capacity, B, repeats):
    import torch

    from gpu_replay import PrioritizedReplayBuffer
    spec = {"obs": ((8,), torch.float32), "action": ((), torch.int64), "reward": ((), torch.float32),
            "next_obs": ((8,), torch.float32), "done": ((), torch.bool)}
    rb = PrioritizedReplayBuffer(capacity, spec, generator=torch.Generator().manual_seed(0))
    rng = np.random.default_rng(0)
    big = rows(min(capacity, 1 << 16), rng)
    while len(rb) < capacity:
        rb.add(big)
    one = rows(1, rng)
    td = [torch.from_numpy(np.abs(rng.standard_normal(B)).astype(np.float32)) for _ in range(16)]
    it = iter(range(1 << 62))
    out = {"add(1)": _median_us(lambda: rb.add(one), repeats),
           f"sample({B})": _median_us(lambda: rb.sample(B, beta=0.4), repeats),
           f"update({B}) sampled": _alternating_us(lambda: rb.sample(B, beta=0.4).keys,
                                                   lambda k: rb.update_priorities(k, td[next(it) % 16]), repeats)}
    lo = rb.sampler.counter.added() - capacity

    def rand_keys():
        return torch.from_numpy(rng.integers(lo, lo + capacity, B))
    out[f"update({B}) random"] = _median_us(lambda k: rb.update_priorities(k, td[next(it) % 16]), repeats,
                                           setup=rand_keys)
    return "gpu_replay (numba)", out


def per_cpprb(capacity, B, repeats):
    import cpprb
    env = {"obs": {"shape": 8, "dtype": np.float32}, "action": {"dtype": np.int64}, "reward": {"dtype": np.float32},
           "next_obs": {"shape": 8, "dtype": np.float32}, "done": {"dtype": np.bool_}}
    rb = cpprb.PrioritizedReplayBuffer(capacity, env, alpha=0.6)
    rng = np.random.default_rng(0)
    big = rows(min(capacity, 1 << 16), rng)
    while rb.get_stored_size() < capacity:
        rb.add(**big)
    one = rows(1, rng)
    pr = [np.abs(rng.standard_normal(B)) for _ in range(16)]
    it = iter(range(1 << 62))
    out = {"add(1)": _median_us(lambda: rb.add(**one), repeats),
           f"sample({B})": _median_us(lambda: rb.sample(B, 0.4), repeats),
           f"update({B}) sampled": _alternating_us(lambda: rb.sample(B, 0.4)["indexes"],
                                                   lambda k: rb.update_priorities(k, pr[next(it) % 16]), repeats),
           f"update({B}) random": _median_us(lambda k: rb.update_priorities(k, pr[next(it) % 16]), repeats,
                                            setup=lambda: rng.integers(0, capacity, B))}
    return f"cpprb {_version('cpprb')}", out


def per_tianshou(capacity, B, repeats):
    from tianshou.data import Batch, PrioritizedReplayBuffer
    rb = PrioritizedReplayBuffer(capacity, alpha=0.6, beta=0.4)
    rng = np.random.default_rng(0)
    r = rows(capacity, rng)
    rb.set_batch(Batch(obs=r["obs"], act=r["action"], rew=r["reward"].astype(np.float64), terminated=r["done"],
                       truncated=np.zeros(capacity, bool), done=r["done"].copy(), obs_next=r["next_obs"]))
    rb._size, rb._insertion_idx, rb.last_index[0] = capacity, 0, capacity - 1
    rb.update_weight(np.arange(capacity), np.abs(rng.standard_normal(capacity)))
    one = rows(1, rng)
    b1 = Batch(obs=one["obs"][0], act=one["action"][0], rew=float(one["reward"][0]), terminated=False,
               truncated=False, obs_next=one["next_obs"][0])
    pr = [np.abs(rng.standard_normal(B)) for _ in range(16)]
    it = iter(range(1 << 62))
    out = {"add(1)": _median_us(lambda: rb.add(b1), repeats),
           f"sample({B})": _median_us(lambda: rb.sample(B), repeats),
           f"update({B}) sampled": _alternating_us(lambda: rb.sample(B)[1],
                                                   lambda k: rb.update_weight(k, pr[next(it) % 16]), repeats),
           f"update({B}) random": _median_us(lambda k: rb.update_weight(k, pr[next(it) % 16]), repeats,
                                            setup=lambda: rng.integers(0, capacity, B))}
    return f"tianshou {_version('tianshou')}", out


# ----------------------------------------------------------------------------- SB3 add
def sb3_add(repeats, flip=False):
    import torch
    from gymnasium import spaces
    from stable_baselines3.common.buffers import ReplayBuffer

    from gpu_replay.compat import SB3ReplayBuffer
    out = {}
    obs_space, act_space = spaces.Box(-1, 1, (OBS,), np.float32), spaces.Discrete(2)
    for n_envs in (1, 4):
        rng = np.random.default_rng(n_envs)
        o = rng.standard_normal((n_envs, OBS)).astype(np.float32)
        a, r, d = rng.integers(0, 2, n_envs), np.ones(n_envs, np.float32), np.zeros(n_envs, bool)
        infos = [{} for _ in range(n_envs)]
        pair = [("stable-baselines3 ReplayBuffer", ReplayBuffer), ("gpu_replay SB3ReplayBuffer", SB3ReplayBuffer)]
        for name, cls in (pair[::-1] if flip else pair):
            rb = cls(100_000, obs_space, act_space, device="cpu", n_envs=n_envs)
            out.setdefault(name, {})[f"add, n_envs={n_envs}"] = _median_us(lambda: rb.add(o, o, a, r, d, infos), repeats)
    out["_versions"] = {"stable-baselines3": _version("stable-baselines3"), "torch": torch.__version__}
    return out


# ----------------------------------------------------------------------------- n-step step
def step_cases(repeats, flip=False):
    import torch

    from bench.dqn import DequeNStep
    from gpu_replay import PrioritizedReplayBuffer
    out = {}
    for E in (1, 4, 64):
        rng = np.random.default_rng(E)
        steps = []
        for t in range(64):  # a fixed stream of steps, episodes ending now and then
            obs = rng.standard_normal((E, OBS)).astype(np.float32)
            steps.append((obs, rng.integers(0, 2, E), rng.standard_normal(E), obs + 1, rng.random(E) < 0.02,
                          rng.random(E) < 0.01))
        it = iter(range(1 << 62))
        spec = {"obs": ((OBS,), torch.float32), "action": ((), torch.int64)}
        rb = PrioritizedReplayBuffer(100_000, spec, n_step=3, gamma=0.99, num_envs=E)
        info = {}

        def ours():
            s = steps[next(it) % 64]
            rb.step(*s, info=info)
        timed = [("gpu_replay rb.step (n-step + PER add)", ours)]
        try:
            import cpprb
        except ImportError:
            cpprb = None
        if cpprb is not None:
            env = {"obs": {"shape": OBS, "dtype": np.float32}, "action": {"dtype": np.int64}, "reward": {},
                   "next_obs": {"shape": OBS, "dtype": np.float32}, "discount": {}, "terminated": {"dtype": np.bool_}}
            crb = cpprb.PrioritizedReplayBuffer(100_000, env, alpha=0.6)
            dq = DequeNStep(E, 3, 0.99)
            fields = ("obs", "action", "reward", "next_obs", "discount", "terminated")

            def deque_cpprb():
                out_rows = dq.step(*steps[next(it) % 64])
                if out_rows:
                    crb.add(**{k: np.asarray(v) for k, v in zip(fields, zip(*out_rows))})
            timed.append(("Python deque n-step + cpprb add", deque_cpprb))
            if E == 1:  # cpprb's own n-step: one stream
                nenv = {"obs": env["obs"], "action": env["action"], "reward": {}, "next_obs": env["next_obs"],
                        "done": {"dtype": np.bool_}}
                nrb = cpprb.PrioritizedReplayBuffer(100_000, nenv, alpha=0.6,
                                                    Nstep={"size": 3, "gamma": 0.99, "rew": "reward", "next": "next_obs"})

                def cpprb_nstep():
                    o, a, r, no, te, tr = steps[next(it) % 64]
                    nrb.add(obs=o, action=a, reward=r, next_obs=no, done=te)
                    if te[0] or tr[0]:
                        nrb.on_episode_end()
                timed.append(("cpprb Nstep (one stream)", cpprb_nstep))
        for name, fn in (timed[::-1] if flip else timed):
            out.setdefault(name, {})[f"step, {E} envs"] = _median_us(fn, repeats)
    return out


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def _rounds(calls, rounds: int) -> dict:
    """Run every (name, fn) of ``calls`` ``rounds`` times, in turn, the order reversed every
    other round (drift on a shared machine hits them alike); each cell: the median of the
    rounds' medians, with the rounds kept under "_rounds"."""
    per = {}
    for r in range(rounds):
        for name, fn in (calls if r % 2 == 0 else calls[::-1]):
            try:
                label, out = fn(r % 2 == 1)
            except ImportError as e:
                per.setdefault(name, {"skipped": str(e)})
                continue
            for impl, cells in out.items():
                if impl.startswith("_"):
                    continue
                for k, v in cells.items():
                    per.setdefault(impl, {}).setdefault(k, []).append(v)
    table = {}
    for impl, cells in per.items():
        if "skipped" in cells:
            table[impl] = cells
            continue
        table[impl] = {k: statistics.median(v) for k, v in cells.items()}
        table[impl]["_rounds"] = {k: [round(x, 2) for x in v] for k, v in cells.items()}
    return table


def run(args) -> dict:
    import torch
    torch.set_num_threads(1)
    res = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "python": platform.python_version(), "torch": torch.__version__, "repeats": args.repeats,
           "rounds": args.rounds,
           "notes": (f"median µs per call; numpy inputs; one thread; GC paused while timing; "
                     f"{args.rounds} rounds taking turns, the median of the rounds' medians"), "cases": {}}
    for capacity, B in args.cases:
        def per(fn):
            def call(_flip):
                name, out = fn(capacity, B, args.repeats)
                print(f"capacity {capacity:,}: {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in out.items()),
                      flush=True)
                return name, {name: out}
            return (fn.__name__, call)
        res["cases"][f"PER calls, capacity {capacity:,}"] = _rounds(
            [per(fn) for fn in (per_gpu_replay, per_cpprb, per_tianshou)], args.rounds)
    res["cases"]["SB3 ReplayBuffer.add"] = _rounds([("sb3", lambda flip: ("sb3", sb3_add(args.repeats, flip)))], args.rounds)
    print(res["cases"]["SB3 ReplayBuffer.add"], flush=True)
    res["cases"]["n-step step"] = _rounds([("step", lambda flip: ("step", step_cases(args.repeats, flip)))], args.rounds)
    print(res["cases"]["n-step step"], flush=True)
    return res


def to_markdown(res: dict) -> str:
    lines = [f"Per-call overhead, {res['machine']}, {res['date']}, torch {res['torch']}; {res['notes']}.", ""]
    for case, table in res["cases"].items():
        impls = {k: v for k, v in table.items() if not k.startswith("_") and "skipped" not in v}
        if not impls:
            continue
        cols = list(dict.fromkeys(c for v in impls.values() for c in v if not c.startswith("_")))
        lines += [f"**{case}**", "", "| implementation | " + " | ".join(cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        for name, v in impls.items():
            lines.append(f"| {name} | " + " | ".join(f"{v[c]:.1f}" if c in v else "" for c in cols) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3, help="rounds taking turns (median of their medians)")
    ap.add_argument("--cases", default="1e4:32,1e6:256", type=lambda v: [
        (int(float(c.split(":")[0])), int(c.split(":")[1])) for c in v.split(",")],
        help="capacity:batch pairs for the PER calls (default 1e4:32,1e6:256)")
    ap.add_argument("--out-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    res = run(args)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    base = os.path.join(args.out_dir, f"overhead-{platform.machine()}-{os.cpu_count()}cores-{stamp}")
    with open(base + ".json", "w") as f:
        json.dump(res, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(to_markdown(res))
    print(to_markdown(res))
    print(f"wrote {base}.json and .md", file=sys.stderr)
    return res


if __name__ == "__main__":
    main()

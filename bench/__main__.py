"""The benchmark suite: gpu_replay against the replay memories users pick today, same work,
same timing loop, one run.

    python -m bench                 # CPU (or CUDA when present): every capacity, batch, op
    python -m bench --quick         # capacity 1e6, B in {256, 1024}, vec8 only (a few minutes)
    python -m bench --device cpu --capacity 1e5 1e6 --batch 256 --peers cpprb,tianshou

Ops (median µs per call, full buffer, alpha 0.6, beta 0.4, |N(0,1)| TD errors):
sample(B) with the fields gathered and IS weights; update(B) of the keys the previous sample
returned; update_random(B) of fresh random live keys; add(B); cycle(B) = add(16 rows) +
sample(B) + update(B), timed as one. On CUDA the
gpu_replay cycle is also timed captured in a CUDA graph (CUDA events, replays).

Transitions: "vec8" (obs float32[8], action int64, reward float32, next_obs float32[8],
done) and "frames" (obs/next_obs uint8[84, 84, 4]); capacities whose estimated memory does
not fit are skipped and reported. Every implementation runs in its own subprocess
(bench/peers), TorchRL under its own interpreter (bench/setup_peers.sh installs the peers);
a peer that is not installed is reported as skipped. Writes a new
bench/results/<device>-<date>-<time>.json for every run (rewritten after each job, so an
interrupted run keeps what it measured; committed results are never overwritten) and a PNG
plot (time vs capacity per op, log axes).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import torch

from bench import peers as P

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu-{platform.machine()}-{os.cpu_count()}cores"


def implementations(device: str, only: list[str] | None) -> list[str]:
    dev = "cuda" if device.startswith("cuda") else "cpu"
    names = [n for n, e in P.REGISTRY.items() if dev in e.devices]
    if only:
        names = [n for n in names if n in only or n.partition(":")[0] in only]
    return names


def memory_budget(device: str) -> int:
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free * 0.8)
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        avail = 8 << 30
    return int(avail * 0.6)


def graph_cycle_us(capacity: int, B: int, device: str, spec_kind: str, repeats: int = 50) -> dict:
    """gpu_replay's cycle on CUDA: eager and captured in a CUDA graph, CUDA events."""
    import numpy as np

    from bench.core import capture_graph, timeit
    from bench.peers._core import CYCLE_ADD, fill_chunks, make_rows, spec
    from gpu_replay import PrioritizedReplayBuffer

    dev = torch.device(device)
    tspec = {k: (s, torch.from_numpy(np.empty(0, d)).dtype) for k, (s, d) in spec(spec_kind).items()}
    rb = PrioritizedReplayBuffer(capacity, tspec, device=dev)
    for rows, td in fill_chunks(spec_kind, capacity):
        keys = rb.add({k: torch.from_numpy(np.ascontiguousarray(v)).to(dev) for k, v in rows.items()})
        rb.update_priorities(keys, torch.from_numpy(td).to(dev))
    add = {k: torch.from_numpy(v).to(dev) for k, v in make_rows(spec_kind, CYCLE_ADD, np.random.default_rng(1)).items()}
    td = torch.rand(B, device=dev)

    def cycle():
        rb.add(add)
        s = rb.sample(B, beta=0.4)
        rb.update_priorities(s.keys, td * s.weights)

    eager = timeit(cycle, dev, repeats, warmup=10)
    g, _ = capture_graph(cycle)
    graphed = timeit(g.replay, dev, repeats, warmup=10)
    ok = rb.tree.check() == 0.0
    return {"eager_us": eager, "graph_us": graphed, "tree_ok": ok}


def run(args, path: str | None = None) -> dict:
    """Every job in turn; with ``path``, the JSON is rewritten after each job (an interrupted
    run keeps what it measured)."""
    device = args.device
    dev_name = device_name(device)
    budget = memory_budget(device)
    jobs = []
    for spec_kind in args.specs:
        caps = args.capacity if spec_kind == "vec8" else args.frames_capacity
        for cap in caps:
            for name in implementations(device, args.peers):
                jobs.append((spec_kind, int(cap), name))
    try:
        from tqdm import tqdm
        bar = tqdm(jobs, desc="bench", unit="job", file=sys.stderr)
    except ImportError:  # progress as plain lines
        bar = None
    out = {"device": dev_name, "device_kind": "cuda" if device.startswith("cuda") else "cpu",
           "date": datetime.date.today().isoformat(), "python": platform.python_version(),
           "torch": torch.__version__, "batch_sizes": args.batch, "ops": args.ops, "results": [],
           "notes": "median µs per call; cycle = add(16) + sample(B) with IS weights + update(B)"}
    versions = {}
    t_start = time.time()
    for i, (spec_kind, cap, name) in enumerate(jobs):
        label = f"{name} {spec_kind} {cap:.0e}"
        if bar is not None:
            bar.set_postfix_str(label)
        else:
            print(f"[{i + 1}/{len(jobs)}] {label} ({time.time() - t_start:.0f} s)", flush=True)
        need = P.estimate_bytes(name, cap, spec_kind)
        if need > budget:
            res = {"skipped": f"needs ~{need / 2**30:.1f} GiB, budget {budget / 2**30:.1f} GiB"}
        else:
            meta = {}
            res = P.time_peer(name, cap, args.batch, ops=args.ops, repeats=args.repeats, spec_kind=spec_kind,
                              max_seconds=args.max_seconds, device=device, meta=meta)
            if meta.get("version"):
                versions[name] = meta["version"]
            if "skipped" not in res and "error" not in res:
                res = {"results": res, "meta": meta}
        out["results"].append({"impl": name, "label": P.REGISTRY[name].label, "spec": spec_kind,
                               "capacity": cap, **res})
        out["versions"] = versions
        out["seconds"] = time.time() - t_start
        if path is not None:
            _write_json(out, path)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if device.startswith("cuda"):
        out["cuda_graph_cycle"] = []
        for cap in args.capacity:
            for B in args.batch:
                try:
                    r = graph_cycle_us(int(cap), B, device, "vec8")
                except RuntimeError as e:  # e.g. out of memory at the largest capacity
                    r = {"skipped": str(e)[:300]}
                out["cuda_graph_cycle"].append({"capacity": int(cap), "B": B, **r})
    out["versions"] = versions
    out["seconds"] = time.time() - t_start
    return out


def _write_json(out: dict, path: str) -> None:
    tmp = path + ".part"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1)
    os.replace(tmp, path)


def results_path(device_name: str, quick: bool, out_dir: str) -> str:
    """A new file for every run: <device>-<date>-<time>[-quick].json (committed results are only
    replaced on purpose, by renaming a run's file over them)."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    stem = f"{device_name.replace(' ', '_')}-{stamp}" + ("-quick" if quick else "")
    path = os.path.join(out_dir, stem + ".json")
    n = 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(out_dir, f"{stem}-{n}.json")
    return path


def table(out: dict, spec_kind: str, cap: int, ops, batch) -> str:
    rows = [r for r in out["results"] if r["spec"] == spec_kind and r["capacity"] == cap]
    cols = [f"{op}({b})" for op in ops for b in batch]
    lines = [f"capacity {cap:,}, {spec_kind}, {out['device']}, median µs per call", "",
             "| implementation | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for r in rows:
        if "results" not in r:
            lines.append(f"| {r['impl']} | skipped: {r.get('skipped') or r.get('error', '?')}"[:240] + " |")
            continue
        cells = []
        for op in ops:
            for b in batch:
                v = r["results"].get(op, {}).get(b)
                cells.append("—" if v is None else f"{v:,.0f}")
        lines.append(f"| {r['impl']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(out: dict, path: str, B: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = out["ops"]
    fig, axes = plt.subplots(1, len(ops), figsize=(4.2 * len(ops), 4), squeeze=False)
    for ax, op in zip(axes[0], ops):
        impls = sorted({r["impl"] for r in out["results"]})
        for impl in impls:
            pts = sorted((r["capacity"], r["results"][op][B]) for r in out["results"]
                         if r["impl"] == impl and r["spec"] == "vec8" and "results" in r
                         and B in r["results"].get(op, {}))
            if pts:
                style = "-o" if impl.startswith("gpu_replay") else "--."
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=impl)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("capacity")
        ax.set_ylabel("median µs per call")
        ax.set_title(f"{op}(B={B})")
        ax.grid(True, which="both", alpha=0.3)
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{out['device']}, {out['date']}, vec8 transitions")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="capacity 1e6, B in {256, 1024}, vec8")
    ap.add_argument("--capacity", type=float, nargs="+", default=None)
    ap.add_argument("--frames-capacity", type=float, nargs="+", default=[1e4, 1e5])
    ap.add_argument("--batch", type=int, nargs="+", default=None)
    ap.add_argument("--specs", nargs="+", default=None, choices=["vec8", "frames"])
    ap.add_argument("--ops", default="sample,update,update_random,add,cycle")
    ap.add_argument("--peers", default=None, help="comma-separated names (default: all)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--max-seconds", type=float, default=1.5)
    ap.add_argument("--out", default=None, help="JSON path (default: a new file in --out-dir)")
    ap.add_argument("--out-dir", default=RESULTS, help="folder for a new <device>-<date>-<time>.json")
    args = ap.parse_args(argv)
    gpu = args.device.startswith("cuda")
    if args.quick:
        args.capacity = args.capacity or [1e6]
        args.batch = args.batch or [256, 1024]
        args.specs = args.specs or ["vec8"]
    args.capacity = [int(c) for c in (args.capacity or ([1e4, 1e5, 1e6, 1e7] + ([1e8] if gpu else [])))]
    args.frames_capacity = [int(c) for c in args.frames_capacity]
    args.batch = args.batch or [64, 256, 1024, 4096]
    args.specs = args.specs or ["vec8", "frames"]
    args.ops = args.ops.split(",")
    args.peers = args.peers.split(",") if args.peers else None
    torch.set_num_threads(1)
    os.makedirs(args.out_dir, exist_ok=True)
    path = args.out or results_path(device_name(args.device), args.quick, args.out_dir)
    out = run(args, path)
    _write_json(out, path)
    png = os.path.splitext(path)[0] + ".png"
    try:
        plot(out, png, 256 if 256 in args.batch else args.batch[0])
    except ImportError:
        png = None
    for spec_kind in args.specs:
        for cap in (args.capacity if spec_kind == "vec8" else args.frames_capacity):
            print()
            print(table(out, spec_kind, cap, args.ops, args.batch))
    for r in out.get("cuda_graph_cycle", []):
        print(f"cycle on CUDA, capacity {r['capacity']:,}, B {r['B']}: "
              + (f"eager {r['eager_us']:.0f} µs, CUDA graph {r['graph_us']:.0f} µs" if "eager_us" in r
                 else f"skipped: {r['skipped']}"))
    print(f"\nwrote {path}" + (f" and {png}" if png else "") + f" ({out['seconds'] / 60:.1f} min)")
    own = [r for r in out["results"] if r["impl"].startswith("gpu_replay") and "results" not in r]
    if own:  # a peer may be missing; this project's own rows may not (e.g. a stale editable install)
        for r in own:
            print(f"ERROR: {r['impl']} {r['spec']} {r['capacity']:,} not measured: "
                  f"{r.get('skipped') or r.get('error')}", file=sys.stderr)
        raise SystemExit(1)
    return out


if __name__ == "__main__":
    main()

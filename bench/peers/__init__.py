"""Peer prioritized replay buffers, measured on the same work as gpu_replay.

Work: transitions of obs float32[8], action int64, reward float32, next_obs float32[8],
done bool (spec_kind "vec8"), or obs/next_obs uint8[84, 84, 4] ("frames"); alpha 0.6,
beta 0.4, priorities |N(0, 1)| TD errors, the buffer full before anything is timed.

Each peer module has `make(capacity, spec_kind="vec8", device="cpu")` returning an object
with
    fill(n)                      bulk-add n rows (untimed setup; the buffer ends full)
    add(B)                       add B rows from preallocated arrays
    sample(B, beta)              sample B rows, gathering the fields and IS weights;
                                 returns the keys that update() takes
    update(keys, priorities)     set priorities from TD errors
and optionally prepare_add(B), prepare_priorities(np_array) (untimed conversions to the
peer's native types) and sync() (device peers).

    >>> from bench.peers import time_peer, PEERS
    >>> time_peer("cpprb", 10**6, [256, 1024])
    {'sample': {256: ..., 1024: ...}, 'update': {...}, 'add': {...}}

A peer that cannot run here returns {"skipped": reason}; one that fails while running
returns {"skipped": "error: ...", "error": message}. By default each peer is measured in
its own subprocess (clean memory, thread limits set before the libraries load); TorchRL
always is, under the interpreter whose torch matches its compiled extension (see
bench/setup_peers.sh and peer_python()).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ._core import ALPHA, BETA, OPS, PEER_MODULES, SPECS, PeerUnavailable, measure, row_bytes

__all__ = [
    "ALPHA", "BETA", "OPS", "PEERS", "REGISTRY", "SPECS", "PeerUnavailable",
    "available", "estimate_bytes", "format_table", "make", "peer_python",
    "time_peer", "time_peers",
]

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(os.path.dirname(_HERE))
RUNNER = os.path.join(_HERE, "runner.py")
MARK = "PEERS_JSON "


@dataclass(frozen=True)
class PeerEntry:
    name: str
    label: str          # for tables
    module: str         # module inside bench.peers
    requires: tuple     # top-level modules that must import
    devices: tuple      # "cpu", "cuda"
    own_python: bool = False  # measured under peer_python(name) (TorchRL)

    def make(self, capacity: int, spec_kind: str = "vec8", device: str = "cpu"):
        import importlib

        from ._core import split_name

        return importlib.import_module(f"{__name__}.{self.module}").make(capacity, spec_kind, device,
                                                                        **split_name(self.name)[1])


REGISTRY: dict[str, PeerEntry] = {
    "gpu_replay:numba": PeerEntry("gpu_replay:numba", "gpu_replay, numba backend (CPU)",
                                  PEER_MODULES["gpu_replay"], ("gpu_replay", "numba"), ("cpu",)),
    "gpu_replay:torch": PeerEntry("gpu_replay:torch", "gpu_replay, torch backend",
                                  PEER_MODULES["gpu_replay"], ("gpu_replay",), ("cpu", "cuda")),
    "gpu_replay:triton": PeerEntry("gpu_replay:triton", "gpu_replay, Triton backend (CUDA)",
                                   PEER_MODULES["gpu_replay"], ("gpu_replay", "triton"), ("cuda",)),
    "seeds_sumtree": PeerEntry("seeds_sumtree", "seeds' SumTree (Python loop per item, numpy heap)",
                               PEER_MODULES["seeds_sumtree"], ("numpy",), ("cpu",)),
    "cpprb": PeerEntry("cpprb", "cpprb PrioritizedReplayBuffer (C++)",
                       PEER_MODULES["cpprb"], ("cpprb",), ("cpu",)),
    "tianshou": PeerEntry("tianshou", "tianshou PrioritizedReplayBuffer (numba)",
                          PEER_MODULES["tianshou"], ("tianshou", "numba"), ("cpu",)),
    "torchrl": PeerEntry("torchrl", "TorchRL TensorDictPrioritizedReplayBuffer (C++ tree)",
                         PEER_MODULES["torchrl"], ("torchrl", "tensordict"), ("cpu", "cuda"),
                         own_python=True),
    "flashbax": PeerEntry("flashbax", "flashbax prioritised flat buffer (JAX)",
                          PEER_MODULES["flashbax"], ("flashbax", "jax"), ("cpu", "cuda")),
    "torch_cumsum": PeerEntry("torch_cumsum", "torch eager cumsum + searchsorted (TD7 style)",
                              PEER_MODULES["torch_cumsum"], ("torch",), ("cpu", "cuda")),
}
PEERS: tuple[str, ...] = tuple(REGISTRY)


def make(name: str, capacity: int, spec_kind: str = "vec8", device: str = "cpu"):
    """The peer object, in this process (raises PeerUnavailable if it cannot run here)."""
    return REGISTRY[name].make(capacity, spec_kind, device)


def peer_python(name: str) -> str:
    """Interpreter that measures `name`. TorchRL: $PEERS_TORCHRL_PYTHON, else
    .venv-peers/bin/python ($PEERS_VENV) when it exists, else this interpreter."""
    if REGISTRY[name].own_python:
        env = os.environ.get("PEERS_TORCHRL_PYTHON")
        if env:
            return env
        venv = os.environ.get("PEERS_VENV", os.path.join(_REPO, ".venv-peers"))
        if not os.path.isabs(venv):
            venv = os.path.join(_REPO, venv)
        cand = os.path.join(venv, "bin", "python")
        if os.path.exists(cand):
            return cand
    return sys.executable


_AVAIL: dict[tuple[str, str], tuple[bool, str]] = {}


def available(name: str, device: str = "cpu") -> tuple[bool, str]:
    """(True, version) or (False, reason), cheaply (no buffer is built)."""
    key = (name, device)
    if key in _AVAIL:
        return _AVAIL[key]
    e = REGISTRY[name]
    dev = "cuda" if str(device).startswith("cuda") else "cpu"
    if dev not in e.devices:
        res = (False, f"{name} has no {dev} implementation")
    else:
        py = peer_python(name)
        probe = (
            "import importlib, importlib.metadata as m\n"
            f"mods = {list(e.requires)!r}\n"
            "for x in mods: importlib.import_module(x)\n"
            + ("import torchrl._torchrl\n" if name == "torchrl" else "")
            + "v = []\n"
            "for x in mods:\n"
            "    try: v.append(x + ' ' + m.version(x))\n"
            "    except Exception: pass\n"
            "print(', '.join(v))\n"
        )
        try:
            r = subprocess.run([py, "-c", probe], capture_output=True, text=True, timeout=300,
                               env={**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")})
            if r.returncode == 0:
                res = (True, r.stdout.strip())
            else:
                last = (r.stderr.strip().splitlines() or ["?"])[-1]
                hint = "; run bench/setup_peers.sh" if "No module named" in last else ""
                res = (False, f"not importable under {py}: {last[:300]}{hint}")
        except (OSError, subprocess.TimeoutExpired) as ex:
            res = (False, f"probe failed under {py}: {ex}")
    _AVAIL[key] = res
    return res


def estimate_bytes(name: str, capacity: int, spec_kind: str = "vec8") -> int:
    """Rough peak memory of building and filling `name` at `capacity` (for capping)."""
    rb = row_bytes(spec_kind)
    per_row = {
        "gpu_replay": rb + 20,
        "seeds_sumtree": rb + 16,
        "cpprb": rb + 16,
        "tianshou": 2 * rb + 24,       # fill stages arrays, then the Batch holds them
        "torchrl": rb + 16,
        "flashbax": 2 * (rb - rb // 2) + 16,  # next_obs not stored; donation keeps one copy
        "torch_cumsum": rb + 4,
    }[name.partition(":")[0]]
    return int(capacity * per_row * 1.2) + (64 << 20)


def _from_json(out: dict) -> dict:
    if "results" in out:
        out["results"] = {op: {int(b): float(t) for b, t in d.items()}
                          for op, d in out["results"].items()}
    return out


def _run_subprocess(name: str, args: dict, timeout: float | None) -> dict:
    py = peer_python(name)
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = "1"
    if args.get("device", "cpu") == "cpu":
        env.setdefault("JAX_PLATFORMS", "cpu")
    env.setdefault("RL_WARNINGS", "0")
    env.setdefault("PYTHONWARNINGS", "ignore")
    try:
        r = subprocess.run([py, RUNNER, "-"], input=json.dumps(args), capture_output=True,
                           text=True, timeout=timeout, env=env, cwd=_REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    except OSError as ex:
        return {"skipped": f"cannot start {py}: {ex}"}
    for line in reversed(r.stdout.splitlines()):
        if line.startswith(MARK):
            out = json.loads(line[len(MARK):])
            if "error" in out and r.stderr.strip():
                out["stderr_tail"] = r.stderr.strip()[-1500:]
            return _from_json(out)
    tail = (r.stderr.strip() or r.stdout.strip())[-800:]
    return {"error": f"runner exited {r.returncode} without a result "
                     f"(killed for memory if -9): {tail}"}


def _torch_threads() -> int | None:
    if "torch" not in sys.modules:
        return None
    return sys.modules["torch"].get_num_threads()


def time_peer(
    name: str,
    capacity: int,
    batch_sizes: Iterable[int],
    ops: Iterable[str] = ("sample", "update", "add"),
    repeats: int = 50,
    spec_kind: str = "vec8",
    *,
    warmup: int = 5,
    max_seconds: float = 3.0,
    device: str = "cpu",
    beta: float = BETA,
    seed: int = 0,
    isolate: bool = True,
    timeout: float | None = 3600,
    meta: dict | None = None,
) -> dict:
    """Median microseconds per call: {op: {B: us}}, or {"skipped": reason}.

    Measures with time.perf_counter around each call (synchronised for device peers),
    after `warmup` calls, for `repeats` calls or until `max_seconds` per (op, B) are spent
    (at least 5). One thread (torch, numba, OMP, XLA). `meta`, if given a dict, receives
    the peer's version, fill time, notes and interpreter."""
    if name not in REGISTRY:
        return {"skipped": f"unknown peer {name!r}"}
    if spec_kind not in SPECS:
        return {"skipped": f"unknown spec_kind {spec_kind!r}"}
    ok, why = available(name, device)
    if not ok:
        return {"skipped": why}
    args = dict(name=name, capacity=int(capacity), batch_sizes=[int(b) for b in batch_sizes],
                ops=list(ops), repeats=int(repeats), spec_kind=spec_kind, warmup=int(warmup),
                max_seconds=float(max_seconds), seed=int(seed), device=str(device),
                beta=float(beta))
    if isolate or REGISTRY[name].own_python and peer_python(name) != sys.executable:
        out = _run_subprocess(name, args, timeout)
        interp = peer_python(name)
    else:
        threads = _torch_threads()
        try:
            out = measure(**args)
        except Exception as ex:  # noqa: BLE001 - a peer's failure is a result
            out = {"error": f"{type(ex).__name__}: {ex}"[:500]}
        finally:
            if threads:  # measure() set one thread; give the caller its setting back
                import torch

                torch.set_num_threads(threads)
        interp = sys.executable
    if meta is not None:
        meta.update(out.get("meta", {}))
        meta["python"] = interp
        if "stderr_tail" in out:
            meta["stderr_tail"] = out["stderr_tail"]
    if "skipped" in out:
        return {"skipped": out["skipped"]}
    if "error" in out:
        return {"skipped": f"error: {out['error']}", "error": out["error"]}
    return out["results"]


def time_peers(
    names: Iterable[str] | None = None,
    capacity: int = 10**6,
    batch_sizes: Iterable[int] = (256, 1024),
    progress: Callable[[str], Any] | None = None,
    metas: dict | None = None,
    **kw,
) -> dict[str, dict]:
    """time_peer for several peers (all by default): {name: result}."""
    out = {}
    for n in (names or PEERS):
        if progress:
            progress(f"peer {n} @ capacity {capacity:,}")
        m: dict = {}
        out[n] = time_peer(n, capacity, list(batch_sizes), meta=m, **kw)
        if metas is not None:
            metas[n] = m
    return out


def format_table(results: dict[str, dict], batch_sizes: Iterable[int],
                 ops: Iterable[str] = ("sample", "update", "add"),
                 metas: dict | None = None) -> str:
    """Markdown table of median microseconds (rows: peers; columns: op(B))."""
    batch_sizes = list(batch_sizes)
    ops = list(ops)
    cols = [f"{op}({b})" for op in ops for b in batch_sizes]
    lines = ["| implementation | " + " | ".join(cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for name, res in results.items():
        label = REGISTRY[name].label if name in REGISTRY else name
        if metas and metas.get(name, {}).get("version"):
            label += f" [{metas[name]['version']}]"
        if "skipped" in res:
            lines.append(f"| {label} | skipped: {res['skipped'][:120]} |" + " |" * (len(cols) - 1))
            continue
        cells = []
        for op in ops:
            for b in batch_sizes:
                v = res.get(op, {}).get(b)
                cells.append("" if v is None else f"{v:,.0f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.peers",
                                description="Time the peer prioritized replay buffers.")
    p.add_argument("--peers", default=",".join(PEERS))
    p.add_argument("--capacity", type=float, nargs="+", default=[1e5, 1e6])
    p.add_argument("--batch", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--ops", default="sample,update,add")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--max-seconds", type=float, default=3.0)
    p.add_argument("--spec", default="vec8", choices=sorted(SPECS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    ops = a.ops.split(",")
    allres = {}
    for cap in a.capacity:
        cap = int(cap)
        metas: dict = {}
        res = time_peers(a.peers.split(","), cap, a.batch, ops=ops, repeats=a.repeats,
                         max_seconds=a.max_seconds, spec_kind=a.spec, device=a.device,
                         metas=metas, progress=lambda s: print(s, file=sys.stderr, flush=True))
        print(f"\ncapacity {cap:,} ({a.spec}, {a.device}), median us per call\n")
        print(format_table(res, a.batch, ops, metas))
        for n, m in metas.items():
            if m.get("fill_s") is not None:
                print(f"  {n}: fill {m['fill_s']:.1f} s, {m.get('version')}", file=sys.stderr)
        allres[cap] = {"results": res, "meta": metas}
    if a.json:
        with open(a.json, "w") as f:
            json.dump({str(k): v for k, v in allres.items()}, f, indent=1, default=str)
    return 0

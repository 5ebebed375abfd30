"""Compile every Triton kernel variant the buffers launch, for real GPUs, without a GPU.

The launchers run for real on ``meta`` tensors (no memory, no data) with each kernel's
``run`` replaced by a recorder: what is recorded is exactly the argument types, constexprs
and warps that launch would compile. Each distinct variant is then compiled with Triton's
own ptxas for the given architectures (sm_90: H100/H200; sm_80: A100), and its PTX is checked
for fused f64 multiply-adds (they would break bit-exactness with the twins).

    python tests/_aot_compile.py 90 80          # prints one line per variant, exits 1 on a failure
"""
import inspect
import os
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from gpu_replay import kernels as K  # noqa: E402
from gpu_replay.keys import KeyCounter  # noqa: E402
from gpu_replay.sumtree import MAX_FANOUT, TreeState  # noqa: E402

_TY = {torch.float64: "fp64", torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
       torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8",
       torch.bool: "i1"}
_OPTIONS = ("num_warps", "num_stages", "enable_fp_fusion", "num_ctas", "maxnreg")
RECORDED: dict = {}


def _record(self, *args, grid, warmup, **kwargs):
    opts = {k: kwargs.pop(k) for k in list(kwargs) if k in _OPTIONS}
    bound = inspect.signature(self.fn).bind(*args, **kwargs)
    bound.apply_defaults()
    sig, consts = {}, {}
    for p in self.params:
        v = bound.arguments[p.name]
        if p.is_constexpr:
            consts[p.name] = v
        elif isinstance(v, torch.Tensor):
            sig[p.name] = "*" + _TY[v.dtype]
        elif isinstance(v, bool):
            sig[p.name] = "i1"
        elif isinstance(v, int):
            if v == 1:  # Triton specializes an int argument equal to 1 as a constant
                sig[p.name] = "constexpr"
                consts[p.name] = 1
            else:
                sig[p.name] = "i32" if -2 ** 31 <= v < 2 ** 31 else "i64"
        elif isinstance(v, float):
            ann = p.annotation or ""
            sig[p.name] = "fp64" if "float64" in str(ann) or "fp64" in str(ann) else "fp32"
        elif v is None:
            sig[p.name] = "constexpr"
            consts[p.name] = None
        else:
            raise TypeError(f"{self.fn.__name__}: argument {p.name} of type {type(v).__name__}")
    key = (self.fn.__name__, tuple(sorted(sig.items())), tuple(sorted(consts.items(), key=str)),
           opts.get("num_warps", 4))
    RECORDED.setdefault(key, (self, sig, consts, opts))


def record_launches():
    """Drive every launcher over the configurations the buffers use."""
    JITFunction.run = _record
    ops = K.backend("triton")
    meta = torch.device("meta")
    configs = [(1, 2), (10_000, 16), (10 ** 6, 16), (10 ** 8, 16), (10 ** 8, 2), (10 ** 6, 128),
               (10 ** 8, MAX_FANOUT)]
    for capacity, fanout in configs:
        st = TreeState(capacity, fanout, 0.6, 1e-6, meta)
        sc = ops.prepare(st)
        counter = KeyCounter(capacity, meta)
        for B in (1, 256, 4096):
            keys = torch.empty(B, dtype=torch.int64, device=meta)
            td = torch.empty(B, dtype=torch.float32, device=meta)
            r = torch.empty(B, dtype=torch.float64, device=meta)
            for valid in (None, torch.empty(B, dtype=torch.bool, device=meta)):
                ops.insert(st, sc, counter, B, valid)
            ops.update(st, sc, counter, keys, td)
            for norm in ("global", "batch"):
                ops.sample(st, sc, counter, r, 0.4, norm)
            ops.sample(st, sc, counter, r, torch.empty((), dtype=torch.float64, device=meta), "global")
            ops.sample(st, sc, counter, r, 0.0, None, True)  # find (the distributed sampler)
    record_rows_and_nstep(meta)
    return list(RECORDED.values())


SPECS = {  # the benchmark's transitions, the README's example, a many-field one
    "vec8": {"obs": ((8,), torch.float32), "action": ((), torch.int64), "reward": ((), torch.float32),
             "next_obs": ((8,), torch.float32), "done": ((), torch.bool)},
    "frames": {"obs": ((84, 84, 4), torch.uint8), "action": ((), torch.int64), "reward": ((), torch.float32),
               "next_obs": ((84, 84, 4), torch.uint8), "done": ((), torch.bool)},
    "wide": {f"f{i}": ((3,), torch.float16) for i in range(10)},  # more fields than one launch takes
}
STEP_SPECS = {"pixels": {"obs": ((4, 84, 84), torch.uint8), "action": ((), torch.int64)},
              "vec": {"obs": ((8,), torch.float32), "action": ((), torch.int64), "aux": ((2,), torch.float32)}}


def record_rows_and_nstep(meta):
    """The storage's row kernels (scatter, gather, uniform draw), NStep's record and emit, and the
    frame storage's stack gather."""
    from gpu_replay.kernels.frames import stacks_triton
    for S, frame in ((4, (84, 84)), (1, (84, 84)), (2, (16, 16))):
        words = frame[0] * frame[1] // 8
        for B in (1, 256):
            i64 = lambda n: torch.empty(n, dtype=torch.int64, device=meta)  # noqa: E731
            stacks_triton(torch.empty((10 ** 5, words), dtype=torch.int64, device=meta), i64(10 ** 5), i64(10 ** 5),
                          i64(B), torch.empty(3, dtype=torch.bool, device=meta), S, 12_500, 0,
                          torch.empty((2 * B * S, words), dtype=torch.int64, device=meta))
    from gpu_replay import NStep
    from gpu_replay.storage import Storage
    for spec in SPECS.values():
        store = Storage(10 ** 6, spec, meta, "triton")
        counter = KeyCounter(10 ** 6, meta)
        for n in (1, 256, 4096):
            rows = {k: torch.empty((n, *shape), dtype=dt, device=meta) for k, (shape, dt) in spec.items()}
            store.write(store.prepare(rows), n, counter, keys=True)
            store.write(store.prepare(rows), n, counter, keys=False)
            store.gather(torch.empty(n, dtype=torch.int64, device=meta))
            store.gather_uniform(torch.empty(n, dtype=torch.float64, device=meta), counter)
    for spec in STEP_SPECS.values():
        for E in (1, 8, 64):
            for mode in ("next_step", "disabled"):
                ns = NStep(E, 3, 0.99, device=meta, spec=spec, autoreset_mode=mode, backend="torch")
                ns.backend = "triton"  # (resolve_backend wants a GPU; the launchers only need the shapes)
                inputs = {k: torch.empty((E, *shape), dtype=dt, device=meta) for k, (shape, dt) in spec.items()}
                for _ in range(3):
                    ns.step(inputs["obs"], inputs["action"],
                            torch.empty(E, device=meta), inputs["obs"], torch.empty(E, dtype=torch.bool, device=meta),
                            torch.empty(E, dtype=torch.bool, device=meta),
                            **{k: v for k, v in inputs.items() if k not in ("obs", "action")})


def main(archs):
    variants = record_launches()
    print(f"{len(variants)} kernel variants launched by the buffers")
    failed = 0
    t0 = time.time()
    for arch in archs:
        target = GPUTarget("cuda", arch, 32)
        backend = triton.compiler.make_backend(target)
        for kernel, sig, consts, opts in variants:
            name = kernel.fn.__name__
            short = {k: v for k, v in consts.items() if v is not None}
            src = triton.compiler.ASTSource(fn=kernel, constexprs=consts, signature=sig, attrs={})
            o = backend.parse_options({"num_warps": opts.get("num_warps", 4), "enable_fp_fusion": False})
            t = time.time()
            try:
                cc = triton.compile(src, target=target, options=o.__dict__)
            except Exception as e:  # noqa: BLE001
                print(f"FAIL sm_{arch} {name} {short}: {type(e).__name__}: {str(e)[:500]}")
                failed += 1
                continue
            fused = "fma.rn.f64" in cc.asm["ptx"]
            print(f"{'FAIL' if fused else 'ok'} sm_{arch} {name} {short} cubin {len(cc.asm['cubin'])} B "
                  f"{time.time() - t:.1f} s" + (" (fused f64 fma in PTX)" if fused else ""))
            failed += fused
    print(f"compiled {len(variants) * len(archs) - failed} of {len(variants) * len(archs)} in "
          f"{time.time() - t0:.0f} s")
    return failed


if __name__ == "__main__":
    sys.exit(1 if main([int(a) for a in sys.argv[1:]] or [90]) else 0)

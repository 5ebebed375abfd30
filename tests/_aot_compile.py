"""Compile every Triton kernel for real GPUs (no GPU needed: Triton's own ptxas), in a
process without TRITON_INTERPRET. Prints one line per kernel; exits non-zero on a failure.

    python tests/_aot_compile.py 90 80      # sm_90 (H100/H200) and sm_80 (A100)
"""
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from gpu_replay.kernels.insert import _insert_kernel  # noqa: E402
from gpu_replay.kernels.levels import _refresh_kernel  # noqa: E402
from gpu_replay.kernels.sample import _sample_kernel  # noqa: E402
from gpu_replay.kernels.update import _update_kernel  # noqa: E402

P64, PF32, PI64 = "*fp64", "*fp32", "*i64"
CASES = [
    ("sample", _sample_kernel, dict(sums_ptr=P64, mins_ptr=P64, offs_ptr=PI64, r_ptr=P64, added_ptr=PI64,
                                    beta_ptr=P64, cst_ptr=P64, slot_out=PI64, key_out=PI64, prio_out=P64,
                                    w_out=PF32, B="i32", C="i32"),
     [dict(K=16, DEPTH=5, NORM_GLOBAL=True, BLOCK=256), dict(K=64, DEPTH=2, NORM_GLOBAL=False, BLOCK=128)], 8),
    ("update", _update_kernel, dict(sums_ptr=P64, keys_ptr=PI64, td_ptr=PF32, added_ptr=PI64, maxes_ptr=P64,
                                    maxnext_ptr=PI64, cnt_ptr=PI64, hyper_ptr=P64, cst_ptr=P64, later_ptr="*u8",
                                    leaf_off="i64", B="i32", C="i32"),
     [dict(HAS_LATER=False, BLOCK=128, JBLOCK=32), dict(HAS_LATER=True, BLOCK=128, JBLOCK=32)], 2),
    ("insert", _insert_kernel, dict(sums_ptr=P64, keys_ptr=PI64, valid_ptr="*u8", maxes_ptr=P64, leaf_off="i64",
                                    B="i32", C="i32"),
     [dict(HAS_VALID=True, BLOCK=128), dict(HAS_VALID=False, BLOCK=1024)], 4),
    ("refresh", _refresh_kernel, dict(sums_ptr=P64, mins_ptr=P64, offs_ptr=PI64, keys_ptr=PI64, B="i32", C="i32",
                                      shift="i32", level="i32"),
     [dict(K=16, LEAF_CHILDREN=True, BLOCK=256), dict(K=32, LEAF_CHILDREN=False, BLOCK=256)], 4),
]


def main(archs):
    failed = 0
    for arch in archs:
        target = GPUTarget("cuda", arch, 32)
        backend = triton.compiler.make_backend(target)
        for name, kernel, sig, variants, warps in CASES:
            for consts in variants:
                signature = {n: sig.get(n, "constexpr") for n in kernel.arg_names}
                src = triton.compiler.ASTSource(fn=kernel, constexprs=consts, signature=signature, attrs={})
                opts = backend.parse_options({"num_warps": warps, "enable_fp_fusion": False})
                try:
                    cc = triton.compile(src, target=target, options=opts.__dict__)
                except Exception as e:  # noqa: BLE001
                    print(f"FAIL sm_{arch} {name} {consts}: {type(e).__name__}: {e}")
                    failed += 1
                    continue
                fused = "fma.rn.f64" in cc.asm["ptx"]  # a fused f64 multiply-add would break bit-exactness
                print(f"{'FAIL' if fused else 'ok'} sm_{arch} {name} {consts} cubin {len(cc.asm['cubin'])} B"
                      + (" (fused f64 fma in PTX)" if fused else ""))
                failed += fused
    return failed


if __name__ == "__main__":
    sys.exit(1 if main([int(a) for a in sys.argv[1:]] or [90]) else 0)

"""The Triton kernels compile for real GPUs (sm_90 Hopper, sm_80 Ampere) with no fused f64
multiply-adds, checked on a machine without a GPU: the interpreter cannot show compile errors."""
import os
import subprocess
import sys

import pytest

from gpu_replay import kernels

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(not kernels.HAVE_TRITON, reason="triton is not installed")
def test_kernels_compile_for_hopper_and_ampere():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, os.path.join(HERE, "_aot_compile.py"), "90", "80"], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("ok sm_") == 2 * 8, r.stdout

"""The Triton kernels compile for real GPUs, checked on a machine without a GPU (the
interpreter cannot show compile errors): every variant the launchers produce, recorded by
driving them on meta tensors, at capacities up to 1e8 and fanouts up to the cap, for sm_90
(H100/H200), with no fused f64 multiply-adds."""
import os
import re
import subprocess
import sys

import pytest

from gpu_replay import kernels

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(not kernels.available("triton"), reason="triton is not installed")
def test_every_launched_variant_compiles_for_hopper(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # a cold compile of everything
    r = subprocess.run([sys.executable, os.path.join(HERE, "_aot_compile.py"), "90"], capture_output=True,
                       text=True, env=env, timeout=1200)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    m = re.search(r"compiled (\d+) of (\d+)", out)
    assert m and m.group(1) == m.group(2) and int(m.group(2)) >= 100, out[-2000:]
    for name in ("_sample_kernel", "_update_kernel", "_insert_kernel", "_refresh_kernel", "_batch_weights_kernel",
                 "_rows_kernel", "_record_kernel", "_emit_kernel", "_stacks_kernel"):
        assert f" {name} " in out, name
    assert "'K': 1024" in out and "'DEPTH': 27" in out  # the largest fanout, the deepest tree (1e8, K=2)

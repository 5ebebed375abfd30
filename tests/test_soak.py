"""The soak script, short: thousands of mixed calls, zero violations."""
import pytest

from bench.soak import soak
from gpu_replay import kernels


@pytest.mark.parametrize("backend", ["torch"] + (["numba"] if kernels.available("numba") else []))
def test_short_soak_has_no_violations(backend):
    res = soak(6000 if backend == "numba" else 3000, capacity=300, check_every=250, backend=backend, progress=False)
    assert res["total_violations"] == 0, res["violations"]
    assert res["calls"]["update"] > 500 and res["calls"]["sample"] > 500
    assert res["stats"]["stale_dropped"] > 0 and res["stats"]["sanitized"] > 0

"""Installation: the package's layout, and what works on machines without the optional
packages (numba, triton: the compiled backends; gymnasium, scipy: some tests' needs)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKERS = str(ROOT / "tests" / "blockers")


def run_without(modules, code=None, args=None, timeout=600):
    """A fresh interpreter in which ``modules`` cannot be imported (tests/blockers)."""
    env = dict(os.environ, GPU_REPLAY_BLOCK=",".join(modules),
               PYTHONPATH=os.pathsep.join([BLOCKERS, str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable] + (["-c", textwrap.dedent(code)] if code is not None else args)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


PLAIN_CYCLE = """
    import sys, tempfile, os
    import torch
    import gpu_replay
    assert "numba" not in sys.modules and "triton" not in sys.modules, "import gpu_replay imported a backend"
    from gpu_replay import NStep, PrioritizedReplayBuffer, ReplayBuffer
    spec = {"obs": ((3,), torch.float32), "action": ((), torch.int64)}
    rb = PrioritizedReplayBuffer(64, spec, generator=torch.Generator().manual_seed(0))
    assert rb.backend == "torch", rb.backend
    for i in range(10):
        keys = rb.add({"obs": torch.randn(8, 3), "action": torch.arange(8)})
        s = rb.sample(16, beta=0.5)
        rb.update_priorities(s.keys, torch.randn(16))
    assert rb.tree.check() == 0.0 and len(rb) == 64
    u = ReplayBuffer(32, spec, n_step=3, gamma=0.9, num_envs=2)
    for t in range(12):
        u.step(torch.randn(2, 3), torch.zeros(2, dtype=torch.int64), torch.ones(2), torch.randn(2, 3),
               torch.tensor([t % 5 == 4, False]), torch.tensor([False, False]))
    assert u.sample(4)["discount"].shape == (4,)
    ns = NStep(2, 2, 0.5)
    path = os.path.join(tempfile.mkdtemp(), "c")
    rb.save(path)
    PrioritizedReplayBuffer(64, spec).load(path)
    from gpu_replay.compat import PrioritizedReplayMemory
    m = PrioritizedReplayMemory(16, 3, device="cpu")
    m.push([0.0, 1.0, 2.0], 1, 0.5, [1.0, 2.0, 3.0], False)
    m.sample(2)
    assert "numba" not in sys.modules and "triton" not in sys.modules
    print("ok")
"""


def test_plain_install_works_without_numba_and_triton():
    """``pip install .`` pulls neither numba nor triton: import and a full cycle on the torch backend."""
    r = run_without(["numba", "triton"], PLAIN_CYCLE)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-3000:]


def test_plain_install_works_without_triton_alone():
    r = run_without(["triton"], PLAIN_CYCLE.replace('assert rb.backend == "torch", rb.backend', "")
                    .replace('"numba" not in sys.modules and ', ""))
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-3000:]


def test_the_suite_collects_without_gymnasium_and_scipy():
    """Optional test dependencies skip only the tests that need them: collection never breaks,
    and the modules that use them in part still run their other tests."""
    r = run_without(["gymnasium", "scipy"], args=["-m", "pytest", "--collect-only", "-q", "tests"])
    out = r.stdout + r.stderr
    last = out.strip().splitlines()[-1]
    assert r.returncode == 0 and "error" not in last and "tests collected" in last, out[-3000:]
    n = int(last.split()[0])
    assert n > 300, out[-500:]
    r = run_without(["gymnasium", "scipy"], args=["-m", "pytest", "-q", "-p", "no:cacheprovider",
                                                   "tests/test_per.py", "tests/test_compat_memory.py",
                                                   "tests/test_nstep.py", "tests/test_compat_sb3.py"])
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "passed" in out and " failed" not in out, out[-1000:]


def test_kernels_ship_inside_the_package_not_as_a_top_level_module(tmp_path):
    import subprocess
    import sys
    import zipfile
    from pathlib import Path
    import gpu_replay.kernels
    import shutil
    root = Path(__file__).resolve().parents[1]
    assert Path(gpu_replay.kernels.__file__).parent == root / "kernels"
    import importlib.util

    import setuptools
    if tuple(int(x) for x in setuptools.__version__.split(".")[:2]) < (70, 1) and \
            importlib.util.find_spec("wheel") is None:  # README: "needs setuptools >= 64 and wheel (or >= 70.1)"
        pytest.skip(f"this Python cannot build a wheel offline: setuptools {setuptools.__version__} without wheel")
    src = tmp_path / "src"  # build from a clean copy: no stale build/ folder can leak in
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "gpu_replay", "kernels"):
        (shutil.copytree if (root / name).is_dir() else shutil.copy)(root / name, src / name)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(src)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next(tmp_path.glob("gpu_replay-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops <= {"gpu_replay", next(t for t in tops if t.endswith(".dist-info"))}, tops
    assert "gpu_replay/kernels/sample.py" in names and "gpu_replay/kernels/_math.py" in names
    assert "gpu_replay/compat/sb3.py" in names and "gpu_replay/compat/memory.py" in names

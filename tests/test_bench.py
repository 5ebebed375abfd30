"""The benchmark scripts: results go to new files (partial results survive an interruption;
committed results are never overwritten), and the per-call overhead script runs."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import __main__ as suite  # noqa: E402

ARGS = ["--device", "cpu", "--capacity", "1e3", "--batch", "8", "--specs", "vec8", "--ops",
        "sample,update,update_random,add", "--repeats", "3", "--max-seconds", "0.2"]


def test_every_run_writes_a_new_file_and_never_the_committed_ones(tmp_path):
    committed = {p: p.stat().st_mtime_ns for p in (ROOT / "bench" / "results").glob("*.json")}
    for _ in range(2):
        suite.main(ARGS + ["--peers", "gpu_replay:torch", "--out-dir", str(tmp_path)])
    files = sorted(tmp_path.glob("*.json"))
    assert len(files) == 2, files
    for f in files:
        out = json.loads(f.read_text())
        r = out["results"][0]
        assert set(r["results"]) == {"sample", "update", "update_random", "add"}, r
    assert {p: p.stat().st_mtime_ns for p in committed} == committed
    quick = suite.results_path("cpu-x", True, str(tmp_path))
    assert quick.endswith("-quick.json") and not Path(quick).exists()


def test_an_interrupted_run_keeps_the_jobs_it_finished(tmp_path, monkeypatch):
    done = []
    real = suite.P.time_peer

    def interrupted(*a, **k):
        if done:
            raise KeyboardInterrupt
        done.append(1)
        return real(*a, **k)
    monkeypatch.setattr(suite.P, "time_peer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        suite.main(ARGS + ["--peers", "gpu_replay:torch,torch_cumsum", "--out-dir", str(tmp_path)])
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1
    out = json.loads(files[0].read_text())
    assert [r["impl"] for r in out["results"]] == ["gpu_replay:torch"] and "results" in out["results"][0]

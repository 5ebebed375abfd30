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


def test_the_overhead_script_runs_and_writes_its_table(tmp_path):
    pytest.importorskip("cpprb")  # the peers this script is measured against
    from bench import overhead
    res = overhead.main(["--repeats", "3", "--cases", "1e3:8", "--out-dir", str(tmp_path)])
    table = res["cases"]["PER calls, capacity 1,000"]
    ours = next(v for k, v in table.items() if k.startswith("gpu_replay"))
    assert set(ours) >= {"add(1)", "sample(8)", "update(8) sampled", "update(8) random"}, ours
    assert all(v > 0 for k, v in ours.items() if not k.startswith("_"))
    assert len(ours["_rounds"]["add(1)"]) == 3  # rounds taking turns, each kept
    md = next(tmp_path.glob("overhead-*.md")).read_text()
    assert "| gpu_replay" in md and "n-step step" in md


def test_the_cleanrl_benchmark_runs_both_buffers_on_the_same_loop(tmp_path):
    pytest.importorskip("gymnasium")
    pytest.importorskip("stable_baselines3")
    from bench import cleanrl_dqn
    res = cleanrl_dqn.main(["--total-timesteps", "300", "--learning-starts", "100", "--rounds", "1",
                            "--out-dir", str(tmp_path)])
    assert [r["buffer"] for r in res["runs"]] == ["sb3", "gpu_replay"]
    for r in res["runs"]:
        assert r["steps"] == 300 and r["buffer_s"] > 0 and r["train_s"] > 0
    assert res["ratio_gpu_replay_to_sb3"] > 0 and len(list(tmp_path.glob("cleanrl-dqn-*.json"))) == 1

"""Smoke test of bench/dqn.py: a few hundred env steps with tiny settings, for each buffer.

Checks that the agent runs end to end (vector env -> n-step buffer -> sample -> double-DQN
update -> priorities), that the buffer receives rows, that the losses are finite and that the
summary carries the reported fields. It does not ask the agent to solve anything.
"""
import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("gymnasium")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import dqn  # noqa: E402

TINY = dict(total_timesteps=400, num_envs=2, learning_starts=100, batch_size=16, hidden=16,
            buffer_size=1000, log_every=0, device="cpu")

FIELDS = ("buffer", "seed", "device", "solved", "solved_at_env_step", "env_steps", "updates", "wall_s",
          "env_steps_per_s", "updates_per_s", "buffer_s", "buffer_share", "buffer_s_by_op", "episodes",
          "avg_return_last_window", "rows_added", "losses_finite", "curve")


def _buffers():
    out = ["gpu_replay", "peer"]
    try:
        import cpprb  # noqa: F401
        out.append("cpprb")
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("buffer", _buffers())
def test_train_runs(buffer):
    r = dqn.train(dqn.Args(buffer=buffer, seed=0, **TINY))
    for k in FIELDS:
        assert k in r, k
    assert r["env_steps"] == 400
    # 200 vector steps, updates from env step 100 on: one per vector step
    assert r["updates"] == 150
    # 2 envs, n=3: every call after the first 2 emits 2 rows (gpu_replay also keeps the
    # reset steps as invalid rows; the deque peers drop them)
    assert 300 <= r["rows_added"] <= 2 * 200
    assert r["episodes"] > 0 and len(r["curve"]["return"]) == r["episodes"]
    assert r["losses_finite"] and r["last_loss"] is not None and math.isfinite(r["last_loss"])
    assert 0.0 < r["buffer_share"] < 1.0
    assert r["env_steps_per_s"] > 0 and r["updates_per_s"] > 0
    assert set(r["buffer_s_by_op"]) == {"step", "sample", "update"}


def test_main_writes_json_and_png(tmp_path):
    res = dqn.main(["--buffer", "gpu_replay", "--seeds", "0", "--total-timesteps", "200", "--num-envs", "2",
                    "--learning-starts", "100", "--batch-size", "8", "--hidden", "8", "--buffer-size", "500",
                    "--log-every", "0", "--device", "cpu", "--out-dir", str(tmp_path)])
    s = res["gpu_replay"]
    js = [p for p in s["paths"] if p.endswith(".json")][0]
    png = [p for p in s["paths"] if p.endswith(".png")][0]
    assert Path(js).name.startswith("dqn-gpu_replay-cpu-") and Path(png).stat().st_size > 0
    loaded = json.loads(Path(js).read_text())
    assert loaded["aggregate"]["seeds"] == [0]
    assert loaded["hyperparameters"]["n_step"] == 3
    assert "env_steps_per_s" in loaded["runs"][0]

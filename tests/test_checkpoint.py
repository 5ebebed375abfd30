"""Checkpoints: exact round trips, refusals that change nothing, and kills in the middle of save."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from conftest import HAS_CUDA, assert_equal
from gpu_replay import PrioritizedReplayBuffer, ReplayBuffer

SPEC = {"obs": ((3,), torch.float32), "action": ((), torch.int64)}


def filled(cls=PrioritizedReplayBuffer, capacity=64, seed=0, device="cpu", steps=90, **kw):
    kw.setdefault("generator", torch.Generator(device=device).manual_seed(seed))
    rb = cls(capacity, SPEC, device=device, n_step=3, gamma=0.9, num_envs=2, **kw)
    g = torch.Generator().manual_seed(seed)
    for t in range(steps):
        rb.step(torch.randn(2, 3, generator=g), torch.randint(0, 4, (2,), generator=g), torch.randn(2, generator=g),
                torch.randn(2, 3, generator=g), torch.rand(2, generator=g) < 0.1, torch.rand(2, generator=g) < 0.05)
        if cls is PrioritizedReplayBuffer and t % 3 == 0 and len(rb):
            s = rb.sample(8)
            td = torch.randn(8, generator=g)
            td[0] = float("nan")
            rb.update_priorities(s.keys, td.to(device))
    return rb


def assert_same(a: dict, b: dict, path="sd"):
    assert a.keys() == b.keys(), path
    for k in a:
        if isinstance(a[k], dict):
            assert_same(a[k], b[k], f"{path}.{k}")
        elif isinstance(a[k], torch.Tensor):
            assert_equal(a[k], b[k], f"{path}.{k}")
        else:
            assert a[k] == b[k], f"{path}.{k}: {a[k]!r} != {b[k]!r}"


@pytest.mark.parametrize("cls", [ReplayBuffer, PrioritizedReplayBuffer])
def test_round_trip_resumes_identically(cls, tmp_path):
    rb = filled(cls)
    path = tmp_path / "buf.ckpt"
    rb.save(path)
    other = filled(cls, seed=1, steps=5)  # different contents and generator state
    other.load(path)
    assert_same(other.state_dict(), rb.state_dict())
    for _ in range(3):  # same generator state -> same batches, and the n-step windows go on alike
        a, b = rb.sample(16), other.sample(16)
        assert_equal(a.keys, b.keys, "keys")
        assert_equal(a["obs"], b["obs"], "obs")
        if cls is PrioritizedReplayBuffer:
            assert_equal(a.weights, b.weights, "weights")
    step = (torch.ones(2, 3), torch.zeros(2, dtype=torch.int64), torch.ones(2), torch.ones(2, 3),
            torch.tensor([True, False]), torch.tensor([False, False]))
    assert_equal(rb.step(*step), other.step(*step), "keys after a step")
    assert_same(other.state_dict(), rb.state_dict())
    if cls is PrioritizedReplayBuffer:
        assert other.tree.check() == 0.0
        assert other.stats() == rb.stats() and other.stats()["sanitized"] > 0


def test_reseeding_after_a_round_trip_gives_identical_batches(tmp_path):
    rb = filled()
    rb.save(tmp_path / "a")
    other = PrioritizedReplayBuffer(64, SPEC, n_step=3, gamma=0.9, num_envs=2, generator=torch.Generator())
    other.load(tmp_path / "a")
    rb.generator.manual_seed(123)
    other.generator.manual_seed(123)
    assert_equal(rb.sample(32).keys, other.sample(32).keys, "keys")


@pytest.mark.parametrize("change,match", [
    (dict(capacity=65), "capacity"),
    (dict(spec={"obs": ((4,), torch.float32), "action": ((), torch.int64)}), "spec"),
    (dict(spec={"obs": ((3,), torch.float64), "action": ((), torch.int64)}), "spec"),
    (dict(alpha=0.7), "alpha"),
    (dict(fanout=4), "fanout"),
    (dict(n_step=2), "n"),
    (dict(num_envs=3), "num_envs"),
    (dict(cls=ReplayBuffer), "kind"),
])
def test_mismatched_checkpoint_is_refused_and_changes_nothing(change, match, tmp_path):
    filled().save(tmp_path / "c")
    kw = dict(capacity=64, spec=SPEC, n_step=3, gamma=0.9, num_envs=2)
    cls = change.pop("cls", PrioritizedReplayBuffer)
    kw.update(change)
    other = cls(kw.pop("capacity"), kw.pop("spec"), **kw)
    other.add({k: torch.ones(5, *shape, dtype=dt) for k, (shape, dt) in other.spec.items()})
    before = other.state_dict()
    with pytest.raises(ValueError, match=match):
        other.load(tmp_path / "c")
    assert_same(other.state_dict(), before)


def test_version_truncation_and_corruption_are_refused(tmp_path):
    rb = filled()
    path = tmp_path / "c"
    rb.save(path)
    raw = path.read_bytes()
    other = filled(seed=3, steps=20)
    before = other.state_dict()
    cases = {
        "truncated": raw[: len(raw) // 2],
        "header only": raw[:20],
        "empty": b"",
        "one byte flipped": raw[:1000] + bytes([raw[1000] ^ 0xFF]) + raw[1001:],
        "not ours": b"PK\x03\x04" + raw[4:],
    }
    for what, blob in cases.items():
        bad = tmp_path / what.replace(" ", "_")
        bad.write_bytes(blob)
        with pytest.raises(ValueError, match="checkpoint"):
            other.load(bad)
        assert_same(other.state_dict(), before)
    sd = rb.state_dict()
    sd["version"] = 99
    with pytest.raises(ValueError, match="version"):
        other.load_state_dict(sd)
    with pytest.raises(ValueError, match="cannot read"):
        other.load(tmp_path / "missing")
    assert_same(other.state_dict(), before)


def test_save_replaces_atomically_and_leaves_no_temporary_files(tmp_path):
    rb = filled()
    for _ in range(3):
        rb.save(tmp_path / "c")
    assert sorted(os.listdir(tmp_path)) == ["c"]


_SAVER = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {root!r})
    from gpu_replay import PrioritizedReplayBuffer
    spec = {{"obs": ((64,), torch.float32), "action": ((), torch.int64)}}
    rb = PrioritizedReplayBuffer(20000, spec, backend="torch")
    i = 0
    while True:  # every save holds rows whose obs all equal the save's number
        rb.add({{"obs": torch.full((20000, 64), float(i)), "action": torch.full((20000,), i)}})
        rb.save({path!r})
        print(i, flush=True)
        i += 1
""")


def test_killed_in_the_middle_of_save_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "c.ckpt"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "saver.py"
    script.write_text(_SAVER.format(root=root, path=str(path)))
    rng = __import__("random").Random(0)
    spec = {"obs": ((64,), torch.float32), "action": ((), torch.int64)}
    kills = 0
    for attempt in range(6):
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        done = -1
        try:
            # wait for at least one save (so there is a previous checkpoint), then kill at random
            line = proc.stdout.readline()
            assert line, "the saver died before its first save"
            done = int(line)
            time.sleep(rng.uniform(0.0, 0.4))
        finally:
            proc.send_signal(signal.SIGKILL)
            rest = proc.communicate()[0]
        kills += 1
        done = max([done] + [int(x) for x in rest.split()])
        rb = PrioritizedReplayBuffer(20000, spec, backend="torch")
        rb.load(path)  # must succeed: the last complete save, or the one being renamed in
        i = int(rb.storage.data["action"][0])
        assert done <= i <= done + 1, (done, i)
        assert (rb.storage.data["action"] == i).all() and (rb.storage.data["obs"] == float(i)).all()
        assert len(rb) == 20000 and rb.tree.check() == 0.0
    assert kills == 6


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_checkpoint_loads_on_cpu_and_back(tmp_path):
    rb = filled(device="cuda", generator=None)
    rb.save(tmp_path / "g")
    cpu = PrioritizedReplayBuffer(64, SPEC, n_step=3, gamma=0.9, num_envs=2)  # no generator, as saved
    cpu.load(tmp_path / "g")
    assert_same(cpu.state_dict(), rb.state_dict())
    cpu.save(tmp_path / "c")
    back = PrioritizedReplayBuffer(64, SPEC, device="cuda", n_step=3, gamma=0.9, num_envs=2)
    back.load(tmp_path / "c")
    assert_same(back.state_dict(), rb.state_dict())
    assert back.tree.check() == 0.0

"""Every promise kept: one test per way an attacker, the peers' own test suites or a new
user broke the library (each failed on the code before it was fixed)."""
import math
import os
import stat
import threading

import numpy as np
import pytest
import torch

from conftest import TRITON_DEVICE, assert_equal
from gpu_replay import NStep, PrioritizedReplayBuffer, ReplayBuffer, kernels

SPEC = {"obs": ((3,), torch.float32), "action": ((2,), torch.float32), "next_obs": ((3,), torch.float32)}
BACKENDS = ["torch"] + (["numba"] if kernels.available("numba") else []) + \
    (["triton"] if kernels.available("triton") and TRITON_DEVICE == "cpu" else [])


def rows(n, start=0):
    k = torch.arange(start, start + n, dtype=torch.float32)
    return {"obs": k[:, None].repeat(1, 3), "action": torch.stack([k, -k], 1), "next_obs": k[:, None].repeat(1, 3) + 0.5}


def snapshot(rb):
    out = {f"data.{k}": v.clone() for k, v in rb.storage.data.items()}
    out["counter"] = rb.sampler.counter.t.clone()
    if isinstance(rb, PrioritizedReplayBuffer):
        st = rb.tree.state
        out.update({k: getattr(st, k).clone() for k in ("sums", "mins", "maxes", "counters")})
    return out


def assert_unchanged(rb, snap):
    now = snapshot(rb)
    for k, v in snap.items():
        assert_equal(now[k], v, k)


# ----------------------------------------------------------------------------- 1. autograd
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", [ReplayBuffer, PrioritizedReplayBuffer])
def test_add_keeps_no_autograd_graph(cls, backend):
    actor = torch.nn.Linear(3, 2)
    critic = torch.nn.Linear(2, 1)
    rb = cls(16, SPEC, backend=backend)
    for _ in range(3):  # every add would chain another node onto the actor's graph
        obs = torch.randn(4, 3)
        rb.add({"obs": obs, "action": actor(obs), "next_obs": obs})
    assert not any(t.requires_grad for t in rb.storage.data.values())
    for _ in range(2):  # a learner's backward twice: no "backward through the graph a second time"
        b = rb.sample(4)
        assert not b["action"].requires_grad
        critic(b["action"]).sum().backward()
    assert actor.weight.grad is None, "the learner's loss put gradients into the actor"


# ----------------------------------------------------------------------------- 2. torn rows
class Exploding(torch.Tensor):
    """Passes every metadata check, then fails when its data is touched."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func.__name__ in ("detach", "to", "contiguous", "clone", "copy_", "numpy", "__getitem__"):
            raise RuntimeError("cannot read this tensor")
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", [ReplayBuffer, PrioritizedReplayBuffer])
def test_a_rejected_add_tears_no_row(cls, backend):
    rb = cls(8, SPEC, backend=backend)
    rb.add(rows(8))  # full: the next add overwrites the oldest rows
    snap = snapshot(rb)
    bad_last_field = [
        ("a meta tensor", torch.empty(4, 3, device="meta")),
        ("a sparse tensor", torch.zeros(4, 3).to_sparse()),
        ("a tensor that fails in the copy", torch.zeros(4, 3).as_subclass(Exploding)),
    ]
    for what, bad in bad_last_field:
        b = rows(4, 100)
        b["next_obs"] = bad  # the last field: the others would have been written before it
        with pytest.raises((ValueError, TypeError)):
            rb.add(b)
        assert_unchanged(rb, snap)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_input_aliasing_the_rows_being_written_is_read_before_the_write(backend):
    rb = ReplayBuffer(8, SPEC, backend=backend)
    rb.add(rows(8))
    old_obs = rb.storage.data["obs"][0:4].clone()
    # the next 4 rows go to slots 0..3; next_obs is a view of those very slots' obs
    rb.add({"obs": torch.full((4, 3), 100.0), "action": torch.zeros(4, 2), "next_obs": rb.storage.data["obs"][0:4]})
    assert_equal(rb.storage.data["next_obs"][0:4], old_obs, "next_obs copied from the rows before the write")
    assert_equal(rb.storage.data["obs"][0:4], torch.full((4, 3), 100.0), "obs")


# ----------------------------------------------------------------------------- 3. invalid rows
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_row_stored_invalid_is_never_sampled_whatever_is_done_with_its_key(backend):
    rb = PrioritizedReplayBuffer(16, SPEC, backend=backend, generator=torch.Generator().manual_seed(0))
    valid = torch.tensor([True, False] * 4)
    keys = rb.add(rows(8), valid=valid)
    rb.update_priorities(keys[~valid], torch.full((4,), 1e6))  # huge priorities for the invalid rows
    rb.update_priorities(keys, torch.full((8,), 1e3))
    assert rb.stats()["stale_dropped"] == 8
    s = rb.sample(2000)
    assert set(s.keys.tolist()) <= set(keys[valid].tolist())
    assert (rb.tree.leaves[:8][~valid] == 0).all()


def test_next_step_reset_rows_stay_unsampled_after_updates():
    E = 2
    rb = PrioritizedReplayBuffer(64, {"obs": ((1,), torch.float32), "action": ((), torch.int64)}, n_step=1,
                                 gamma=0.9, num_envs=E, generator=torch.Generator().manual_seed(1))
    keys, reset = [], []
    for t in range(20):
        done = torch.tensor([t % 5 == 4, False])
        k = rb.step(torch.full((E, 1), float(t)), torch.zeros(E, dtype=torch.int64), torch.ones(E),
                    torch.full((E, 1), t + 1.0), done, torch.tensor([False, False]))
        keys.append(k)
        if t % 5 == 0 and t > 0:
            reset.append(int(k[0]))  # env 0's step after its episode ended: a reset step
    allk = torch.cat(keys)
    rb.update_priorities(allk, torch.full((allk.shape[0],), 50.0))  # the agent updates every key it got
    s = rb.sample(3000)
    assert not set(s.keys.tolist()) & set(reset)


# ----------------------------------------------------------------------------- 4. keys never reused
@pytest.mark.parametrize("backend", BACKENDS)
def test_keys_are_never_reused_after_clear(backend):
    rb = PrioritizedReplayBuffer(10, SPEC, backend=backend)
    old = rb.add(rows(13))
    rb.clear()
    new = rb.add(rows(4))
    assert new.min() > old.max() and int(new[0]) % 10 == 0
    before = rb.tree.leaves.clone()
    rb.update_priorities(old, torch.full((13,), 9.0))
    assert_equal(rb.tree.leaves, before, "leaves after pre-clear keys")
    assert rb.stats()["stale_dropped"] == 13


def test_keys_are_never_reused_after_a_load_that_rolls_back(tmp_path):
    rb = PrioritizedReplayBuffer(10, SPEC, generator=torch.Generator().manual_seed(0))
    rb.add(rows(6))
    rb.save(tmp_path / "c")
    after = rb.add(rows(5, 6))  # keys 6..10, handed out after the save
    rb.load(tmp_path / "c")  # rolls the rows back
    before = rb.tree.leaves.clone()
    rb.update_priorities(after, torch.full((5,), 7.0))
    assert_equal(rb.tree.leaves, before, "keys handed out after the save hit nothing")
    assert rb.stats()["stale_dropped"] == 5
    s = rb.sample(50)
    assert not set(s.keys.tolist()) & set(after.tolist())
    assert (rb.add(rows(3)) > after.max()).all()
    # the loaded rows are the saved ones, under keys that still address them
    assert_equal(rb.sample(40)["obs"][:, 0] < 6, torch.ones(40, dtype=torch.bool), "rolled-back rows")


def test_a_fresh_buffer_loads_a_checkpoint_with_its_keys(tmp_path):
    a = PrioritizedReplayBuffer(10, SPEC, generator=torch.Generator().manual_seed(0))
    a.add(rows(23))
    a.save(tmp_path / "c")
    b = PrioritizedReplayBuffer(10, SPEC, generator=torch.Generator().manual_seed(5))
    b.load(tmp_path / "c")
    assert b.sampler.counter.read() == a.sampler.counter.read()


# ----------------------------------------------------------------------------- 5. huge TD errors
@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_finite_td_errors_keep_priorities_finite_and_monotone(backend):
    rb = PrioritizedReplayBuffer(8, SPEC, alpha=2.0, backend=backend, generator=torch.Generator().manual_seed(0))
    keys = rb.add(rows(8))
    td = torch.tensor([1e180, 1e200, 1e308, 1e308, 1.0, 1e-300, 3.0, 0.0], dtype=torch.float64)
    rb.update_priorities(keys, td)
    p = rb.tree.leaves
    assert torch.isfinite(p).all() and (p > 0).all()
    assert p[1] >= p[0] and p[2] == p[3] and p[0] >= p[6] >= p[4] >= p[5], p.tolist()
    assert math.isfinite(float(rb.tree.total())) and rb.tree.check() == 0.0
    s = rb.sample(4000)
    counts = torch.bincount(s.keys - keys[0], minlength=8).tolist()
    assert counts[2] > 800 and counts[3] > 800, counts  # the two largest rows share the mass
    assert torch.isfinite(s.weights).all()


def test_check_fails_on_nan_or_inf_anywhere():
    rb = PrioritizedReplayBuffer(8, SPEC)
    rb.add(rows(8))
    assert rb.tree.check() == 0.0
    for where in ("root", "leaf", "max"):
        t = PrioritizedReplayBuffer(8, SPEC)
        t.add(rows(8))
        st = t.tree.state
        if where == "root":
            st.sums[0] = float("nan")
        elif where == "leaf":
            st.leaves[3] = float("inf")
        else:
            st.maxes[0] = float("nan")
        assert t.tree.check() == math.inf, where


# ----------------------------------------------------------------------------- 6. load checks
def _saved(tmp_path):
    rb = PrioritizedReplayBuffer(16, SPEC, n_step=3, gamma=0.9, num_envs=2, generator=torch.Generator().manual_seed(0))
    for t in range(12):
        rb.step(torch.randn(2, 3), torch.randn(2, 2), torch.randn(2), torch.randn(2, 3),
                torch.tensor([t % 4 == 3, False]), torch.tensor([False, False]))
    s = rb.sample(8)
    rb.update_priorities(s.keys, torch.randn(8))
    return rb, rb.state_dict()


CORRUPTIONS = {
    "generator state": lambda sd: sd["generator"].__setitem__("state", torch.zeros(3, dtype=torch.uint8)),
    "generator entry": lambda sd: sd.__setitem__("generator", {"device": "cpu"}),
    "NaN leaf": lambda sd: sd["sampler"]["tree"]["leaves"].__setitem__(2, float("nan")),
    "negative leaf": lambda sd: sd["sampler"]["tree"]["leaves"].__setitem__(2, -1.0),
    "oversized leaf": lambda sd: sd["sampler"]["tree"]["leaves"].__setitem__(2, 1e300),
    "NaN running max": lambda sd: sd["sampler"]["tree"]["maxes"].__setitem__(0, float("nan")),
    "counters that disagree": lambda sd: sd.__setitem__("rows", sd["rows"] - 1),
    "a floor off the ring": lambda sd: sd["sampler"]["tree"].__setitem__("floor", 3),
    "a priority past the stored rows": lambda sd: _past_rows(sd),
    "n-step windows of another shape": lambda sd: sd["nstep"].__setitem__("reward", torch.zeros(3, 3, dtype=torch.float64)),
}


def _past_rows(sd):
    t = sd["sampler"]["tree"]
    t["added"], t["floor"] = 5, 0
    sd["rows"] = 5
    sd["data"] = {k: v[:5] for k, v in sd["data"].items()}


@pytest.mark.parametrize("what", list(CORRUPTIONS))
def test_load_checks_everything_before_changing_anything(what, tmp_path):
    import copy
    src, sd = _saved(tmp_path)
    sd = copy.deepcopy(sd)
    CORRUPTIONS[what](sd)
    rb, _ = _saved(tmp_path)
    snap = snapshot(rb)
    ns = rb.nstep.state_dict()
    g = rb.generator.get_state()
    with pytest.raises(ValueError):
        rb.load_state_dict(sd)
    assert_unchanged(rb, snap)
    assert_equal(rb.generator.get_state(), g, "generator")
    for k, v in ns.items():
        if isinstance(v, torch.Tensor):
            assert_equal(rb.nstep.state_dict()[k], v, k)


def test_load_rebuilds_the_levels_from_the_leaves(tmp_path):
    rb, sd = _saved(tmp_path)
    other = PrioritizedReplayBuffer(16, SPEC, n_step=3, gamma=0.9, num_envs=2)
    other.tree.state.sums.fill_(123.0)  # garbage in the internal levels
    other.load_state_dict(sd)
    assert_equal(other.tree.state.sums, rb.tree.state.sums, "sums")
    assert other.tree.check() == 0.0


def test_load_reads_the_header_before_the_payload(tmp_path):
    """A huge foreign file is refused from its header, without reading it into memory."""
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.write(b"GPURPLY1" + (10 ** 9).to_bytes(8, "little") + b"\0" * 32)
        f.truncate(3 * 10 ** 9)  # a sparse 3 GB file
    rb = PrioritizedReplayBuffer(16, SPEC)
    with pytest.raises(ValueError, match="truncated or padded"):
        rb.load(big)
    foreign = tmp_path / "foreign"
    with open(foreign, "wb") as f:
        f.write(b"\x7fELF")
        f.truncate(3 * 10 ** 9)
    with pytest.raises(ValueError, match="magic"):
        rb.load(foreign)


# ----------------------------------------------------------------------------- 7. graph replays
@pytest.mark.skipif("triton" not in BACKENDS, reason="needs the Triton path (interpreter)")
def test_nothing_trusts_a_host_mirror_a_graph_replay_cannot_update(tmp_path):
    """A CUDA graph replay runs the kernels of add/sample/update and nothing else: drive the
    device-side state that way (kernels only, no Python bookkeeping) and check that len(),
    check(), state_dict() and save() see every row."""
    rb = PrioritizedReplayBuffer(4096, SPEC, backend="triton", generator=torch.Generator().manual_seed(0))
    rb.add(rows(1024))
    batch = rb.storage.prepare(rows(128, 5000))
    tree = rb.tree
    for _ in range(20):  # what replaying a captured add does
        rb.storage.write(batch, 128, tree.counter)
        tree.ops.insert(tree.state, tree.scratch, tree.counter, 128, None)
    assert len(rb) == min(1024 + 20 * 128, 4096) == 3584
    assert rb.tree.check() == 0.0
    sd = rb.state_dict()
    assert sd["rows"] == 3584 and sd["data"]["obs"].shape[0] == 3584
    rb.save(tmp_path / "c")
    other = PrioritizedReplayBuffer(4096, SPEC, backend="triton")
    other.load(tmp_path / "c")
    assert len(other) == 3584 and (other.storage.data["obs"][1024:3584, 0] >= 5000).all()


# ----------------------------------------------------------------------------- 10. autoreset misuse
def test_same_step_info_with_a_next_step_buffer_raises_with_the_fix():
    rb = ReplayBuffer(32, {"obs": ((2,), torch.float32), "action": ((), torch.int64)}, n_step=3, num_envs=2)
    final = np.empty(2, dtype=object)
    final[0] = np.ones(2, np.float32)
    info = {"final_obs": final, "_final_obs": np.array([True, False])}
    snap = rb.nstep.state_dict()
    with pytest.raises(ValueError, match="autoreset_mode=envs.metadata"):
        rb.step(np.zeros((2, 2), np.float32), np.zeros(2, np.int64), np.ones(2), np.zeros((2, 2), np.float32),
                np.array([True, False]), np.array([False, False]), info=info)
    for k, v in snap.items():
        if isinstance(v, torch.Tensor):
            assert_equal(rb.nstep.state_dict()[k], v, k)


def test_the_mode_is_taken_from_the_vector_env():
    gym = pytest.importorskip("gymnasium")
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2,
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    rb = ReplayBuffer(32, {"obs": ((4,), torch.float32), "action": ((), torch.int64)}, n_step=2, num_envs=2,
                      autoreset_mode=envs)
    assert rb.nstep.autoreset_mode == "same_step"
    rb2 = ReplayBuffer(32, {"obs": ((4,), torch.float32), "action": ((), torch.int64)}, n_step=2, num_envs=2,
                       autoreset_mode=envs.metadata["autoreset_mode"])
    assert rb2.nstep.autoreset_mode == "same_step"
    envs.close()


# ----------------------------------------------------------------------------- 11. memory
def test_nstep_window_memory_is_linear_in_n():
    ns = NStep(1, 65536, 0.99, spec={"obs": ((1,), torch.float32), "action": ((), torch.int64)})
    held = sum(t.numel() * t.element_size() for t in vars(ns).values() if isinstance(t, torch.Tensor))
    held += sum(t.numel() * t.element_size() for t in ns._win.values())
    assert held < 4 * 2 ** 20, held  # ~2.5 MB; quadratic would be 34 GB


def test_the_readme_memory_line_bytes_per_row_of_the_example_spec():
    """README "Memory": the example's spec (obs float32[4], int64 action, 3-step PER) costs 58
    bytes a row: 49 of stored fields (obs, action, reward, next_obs, discount, terminated) and
    9 of sum tree; ``nbytes`` counts the n-step windows and the key counter too."""
    spec = {"obs": ((4,), torch.float32), "action": ((), torch.int64)}
    rb = PrioritizedReplayBuffer(100_000, spec, alpha=0.6, n_step=3, gamma=0.99, num_envs=8)
    C = rb.capacity
    assert set(rb.storage.data) == {"obs", "action", "reward", "next_obs", "discount", "terminated"}
    assert round(rb.storage.nbytes / C) == 49
    tree = rb.tree.state.sums.nbytes + rb.tree.state.mins.nbytes
    assert round(tree / C) == 9
    assert rb.storage.nbytes + tree + rb.nstep.nbytes <= rb.nbytes <= rb.storage.nbytes + tree + rb.nstep.nbytes + 64
    assert round(rb.nbytes / C) == 58


def test_the_first_masked_add_allocates_in_proportion_to_the_capacity_not_the_rows_ever_added():
    rb = ReplayBuffer(64, SPEC)
    rb.add(rows(64))
    rb.sampler.counter.set(3_000_000_000, 2_999_999_936)  # 3e9 rows ever added (floor: a multiple of 64)
    rb.add(rows(4), valid=torch.tensor([True, False, True, True]))  # makes the validity tree
    tree = rb.sampler.mask_tree
    assert tree.state.sums.numel() < 2 * 64 + 64
    assert len(rb) == 64
    s = rb.sample(500)
    assert (s.keys >= 3_000_000_000 - 60).all() and int(s.keys.max()) < 3_000_000_004
    assert 3_000_000_001 not in s.keys.tolist()  # the invalid one


def test_inference_mode_around_the_first_masked_add():
    rb = ReplayBuffer(16, SPEC)
    with torch.inference_mode():
        rb.add(rows(4), valid=torch.tensor([True, True, False, True]))
    rb.add(rows(4), valid=torch.tensor([True, False, True, True]))  # works outside inference mode
    with torch.inference_mode():
        pr = PrioritizedReplayBuffer(16, SPEC)
    pr.add(rows(4))
    pr.update_priorities(pr.sample(2).keys, torch.ones(2))
    assert len(rb) == 8 and pr.tree.check() == 0.0


# ----------------------------------------------------------------------------- 12. save targets
def test_save_writes_through_a_symlink_and_refuses_special_files(tmp_path):
    rb = PrioritizedReplayBuffer(8, SPEC)
    rb.add(rows(3))
    target = tmp_path / "real.ckpt"
    link = tmp_path / "link.ckpt"
    rb.save(target)
    link.symlink_to(target)
    rb.add(rows(2))
    rb.save(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    other = PrioritizedReplayBuffer(8, SPEC)
    other.load(target)
    assert len(other) == 5
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="regular file"):
        rb.save(fifo)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    with pytest.raises(ValueError, match="regular file"):
        rb.save(tmp_path)
    with pytest.raises(ValueError, match="regular file"):
        rb.save("/dev/null")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_saved_files_honour_the_umask(tmp_path):
    rb = PrioritizedReplayBuffer(8, SPEC)
    old = os.umask(0o027)
    try:
        rb.save(tmp_path / "c")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "c").st_mode) == 0o640


# ----------------------------------------------------------------------------- 13. smaller ones
def test_memory_adapter_takes_every_integer_index_dtype_and_normalizes_by_the_batch():
    from gpu_replay.compat import PrioritizedReplayMemory
    m = PrioritizedReplayMemory(32, 2, device="cpu", generator=torch.Generator().manual_seed(0))
    for t in range(20):
        m.push(np.full(2, t, np.float32), 0, 1.0, np.zeros(2, np.float32), False)
    out = m.sample(8)
    keys = out[-1].numpy()
    for dt in (np.ulonglong, np.uint64, np.int32, np.uint32, np.int16):
        m.update_priorities(keys.astype(dt), np.random.rand(8))
    m.update_priorities(np.ulonglong(int(keys[0])), 0.5)
    w = m.sample(64)[5]
    assert float(w.max()) == 1.0  # the batch's least likely row has weight 1
    assert m.buffer.tree.check() == 0.0


def test_a_zero_size_field_is_refused_at_the_spec():
    with pytest.raises(ValueError, match=r"spec\['x'\]: expected a shape with no zero dimension"):
        ReplayBuffer(8, {"x": ((0, 3), torch.float32)})


def test_tree_check_runs_under_the_buffer_lock():
    rb = PrioritizedReplayBuffer(256, {"x": ((), torch.float32)}, backend="torch", fanout=4)
    rb.add({"x": torch.zeros(256)})
    stop = threading.Event()
    bad = []

    def monitor():
        while not stop.is_set():
            v = rb.tree.check()
            if v != 0.0:
                bad.append(v)

    th = threading.Thread(target=monitor)
    th.start()
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        s = rb.sample(32)
        rb.update_priorities(s.keys, torch.randn(32, generator=g) * 10)
        rb.add({"x": torch.zeros(17)})
    stop.set()
    th.join()
    assert not bad, bad[:3]


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs the Triton interpreter")
def test_two_triton_buffers_in_two_threads():
    errors = []

    def work(seed):
        try:
            rb = PrioritizedReplayBuffer(64, SPEC, backend="triton", generator=torch.Generator().manual_seed(seed))
            for i in range(15):
                rb.add(rows(8, 8 * i))
                s = rb.sample(8)
                rb.update_priorities(s.keys, torch.rand(8))
            assert rb.tree.check() == 0.0
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    ths = [threading.Thread(target=work, args=(s,)) for s in range(2)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    assert not errors, errors


BAD_CALLS = [
    lambda: ReplayBuffer(0, SPEC),
    lambda: ReplayBuffer(8, {"x": (3,)}),
    lambda: PrioritizedReplayBuffer(8, SPEC, alpha=-1.0),
    lambda: PrioritizedReplayBuffer(8, SPEC, fanout=12),
    lambda: PrioritizedReplayBuffer(8, SPEC, normalize="max"),
    lambda: PrioritizedReplayBuffer(8, SPEC, backend="cuda"),
    lambda: PrioritizedReplayBuffer(8, SPEC).sample(4),
    lambda: PrioritizedReplayBuffer(8, SPEC).sample(0),
    lambda: PrioritizedReplayBuffer(8, SPEC).sample(4, beta=2.0),
    lambda: PrioritizedReplayBuffer(8, SPEC).update_priorities(torch.tensor([1], dtype=torch.int32), torch.ones(1)),
    lambda: PrioritizedReplayBuffer(8, SPEC).update_priorities(torch.tensor([1]), torch.ones(2)),
    lambda: PrioritizedReplayBuffer(8, SPEC).add({"obs": torch.zeros(2, 3)}),
    lambda: PrioritizedReplayBuffer(8, SPEC).add({**rows(2), "obs": torch.zeros(2, 4)}),
    lambda: PrioritizedReplayBuffer(8, SPEC).add(rows(2), valid=torch.ones(2)),
    lambda: NStep(0, 3, 0.9),
    lambda: NStep(2, 3, 1.5),
    lambda: NStep(2, 3, 0.9, autoreset_mode="sometimes"),
    lambda: ReplayBuffer(8, SPEC).step(*[torch.zeros(1)] * 6),
]


@pytest.mark.parametrize("i", range(len(BAD_CALLS)))
def test_every_message_names_the_argument_what_was_expected_and_what_was_given(i):
    with pytest.raises((ValueError, TypeError)) as e:
        BAD_CALLS[i]()
    msg = str(e.value)
    assert "expected" in msg and ", got" in msg, msg
    assert msg.split(":")[0].strip(), msg

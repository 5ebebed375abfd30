"""The one-object pipeline: n-step windows feeding the buffer (``n_step=`` + ``step``)."""
import numpy as np
import pytest
import torch

from conftest import assert_equal
from gpu_replay import NStep, PrioritizedReplayBuffer, ReplayBuffer, kernels

SPEC = {"obs": ((3,), torch.float32), "action": ((), torch.int64), "aux_action": ((2,), torch.float32)}


def stream(T, E, seed):
    g = torch.Generator().manual_seed(seed)
    for t in range(T):
        obs = torch.randn(E, 3, generator=g)
        yield dict(obs=obs, action=torch.randint(0, 4, (E,), generator=g), reward=torch.randn(E, generator=g),
                   next_obs=obs + 1, terminated=torch.rand(E, generator=g) < 0.1,
                   truncated=torch.rand(E, generator=g) < 0.05, aux_action=torch.randn(E, 2, generator=g))


@pytest.mark.parametrize("cls", [ReplayBuffer, PrioritizedReplayBuffer])
@pytest.mark.parametrize("n", [1, 3])
def test_step_equals_nstep_then_add(cls, n):
    E = 4
    rb = cls(500, SPEC, n_step=n, gamma=0.9, num_envs=E, generator=torch.Generator().manual_seed(0))
    ref = NStep(E, n, 0.9, spec=SPEC)
    rows_all, valid_all = [], []
    for tr in stream(40, E, seed=n):
        keys = rb.step(**tr)
        out = ref.step(**tr)
        assert (keys is None) == (out is None)
        if out is not None:
            assert keys.shape == (E,)
            rows_all.append(out[0])
            valid_all.append(out[1])
    rb.flush()
    out = ref.flush()
    if out is not None:
        rows_all.append(out[0])
        valid_all.append(out[1])
    for name in rb.spec:
        assert_equal(rb.storage.data[name][:len(rb)], torch.cat([r[name] for r in rows_all]), name)
    valid = torch.cat(valid_all)
    s = rb.sample(2000)
    assert valid[s.keys].all(), "an invalid row (kept only for shape) was sampled"
    if cls is PrioritizedReplayBuffer:
        assert_equal(rb.tree.leaves[:len(rb)] == 0, ~valid, "invalid rows have priority 0")


def test_one_step_pipeline_stores_plain_transitions():
    E = 3
    rb = PrioritizedReplayBuffer(100, SPEC, n_step=1, gamma=0.99, num_envs=E, autoreset_mode="disabled")
    trs = list(stream(5, E, seed=7))
    for tr in trs:
        rb.step(**tr)
    assert len(rb) == 15
    d = rb.storage.data
    assert_equal(d["reward"][:15], torch.cat([tr["reward"] for tr in trs]), "reward")
    assert_equal(d["next_obs"][:15], torch.cat([tr["next_obs"] for tr in trs]), "next_obs")
    assert_equal(d["terminated"][:15], torch.cat([tr["terminated"] for tr in trs]), "terminated")
    assert torch.allclose(d["discount"][:15], torch.full((15,), 0.99))


def test_step_without_n_step_and_bad_pipeline_arguments():
    rb = PrioritizedReplayBuffer(10, SPEC)
    with pytest.raises(ValueError, match="n_step"):
        rb.step(**next(stream(1, 2, 0)))
    with pytest.raises(ValueError, match="num_envs"):
        PrioritizedReplayBuffer(10, SPEC, n_step=3)
    with pytest.raises(ValueError, match="gamma"):
        PrioritizedReplayBuffer(10, SPEC, n_step=3, gamma=1.5, num_envs=2)
    with pytest.raises(ValueError, match="n"):
        PrioritizedReplayBuffer(10, SPEC, n_step=0, num_envs=2)


def test_uniform_buffer_with_validity_mask_skips_invalid_rows():
    rb = ReplayBuffer(20, {"x": ((), torch.int64)}, generator=torch.Generator().manual_seed(3))
    rb.add({"x": torch.arange(5)})  # before any mask: all valid
    rb.add({"x": torch.arange(5, 15)}, valid=torch.arange(10) % 2 == 0)
    s = rb.sample(3000)
    got = set(s["x"].tolist())
    assert got == {0, 1, 2, 3, 4, 5, 7, 9, 11, 13}
    assert_equal(s["x"], s.keys, "keys")


@pytest.mark.parametrize("mode", ["disabled", "same_step"])
def test_modes_without_reset_steps_add_no_mask(mode):
    """Only next-step autoreset emits rows that are not transitions: the other modes add
    every row as valid, and a uniform buffer keeps plain randint sampling (no tree)."""
    rb = ReplayBuffer(100, SPEC, n_step=3, gamma=0.9, num_envs=4, autoreset_mode=mode)
    for tr in stream(20, 4, seed=1):
        extra = {"final_obs": tr["next_obs"] + 10} if mode == "same_step" else {}
        rb.step(**tr, **extra)
    rb.flush()
    assert rb.sampler.mask_tree is None and len(rb) == 80


@pytest.mark.parametrize("cls", [ReplayBuffer, PrioritizedReplayBuffer])
def test_clear_empties_everything(cls):
    rb = cls(50, SPEC, n_step=3, gamma=0.9, num_envs=4)
    for tr in stream(30, 4, seed=2):
        rb.step(**tr)
    before = rb.sample(8).keys
    added = rb.sampler.counter.added()
    rb.clear()
    assert len(rb) == 0
    with pytest.raises(ValueError, match="empty"):
        rb.sample(4)
    for tr in stream(5, 4, seed=3):
        rb.step(**tr)
    start = -(-added // 50) * 50  # keys go on from the next multiple of the capacity
    s = rb.sample(8)
    assert len(rb) == 12 and (s.keys >= start).all() and (s.keys < start + 12).all()
    assert_equal(rb.storage.data["obs"][12:], torch.zeros(38, 3), "cleared rows")
    if cls is PrioritizedReplayBuffer:
        assert rb.tree.check() == 0.0 and rb.stats()["stale_dropped"] == 0
        leaves = rb.tree.leaves.clone()
        rb.update_priorities(before, torch.full((8,), 50.0))  # keys from before the clear: stale
        assert rb.stats()["stale_dropped"] == 8
        assert_equal(rb.tree.leaves, leaves, "leaves after stale keys")


@pytest.mark.parametrize("backend", ["torch"] + (["numba"] if kernels.available("numba") else []))
def test_update_takes_grad_tensors_and_lists(backend):
    rb = PrioritizedReplayBuffer(20, {"x": ((), torch.float32)}, backend=backend)
    rb.add({"x": torch.zeros(10)})
    td = torch.ones(3, requires_grad=True) * 2.0
    rb.update_priorities(torch.tensor([0, 1, 2]), td)  # still attached to a graph
    rb.update_priorities([3, 4], [0.5, -1.0])
    leaves = rb.tree.leaves
    assert leaves[0].item() == leaves[1].item() and leaves[3].item() < leaves[4].item()
    assert rb.tree.check() == 0.0


@pytest.mark.parametrize("n", [1, 3, 5])
def test_nstep_compiled_cpu_scan_equals_the_tensor_ops(n):
    """On the CPU NStep's emit runs a numba loop; on other devices fixed-shape torch ops.
    Both must emit the same rows (rewards up to summation-order rounding)."""
    if not kernels.available("numba"):
        pytest.skip("numba is not installed: only the torch path exists")
    fast, slow = NStep(4, n, 0.9, spec=SPEC), NStep(4, n, 0.9, spec=SPEC, backend="torch")
    assert fast.backend == "numba"
    for t, tr in enumerate(stream(60, 4, seed=n)):
        a = fast.step(**tr)
        b = slow.step(**tr)
        assert (a is None) == (b is None)
        if a is None:
            continue
        assert_equal(a[1], b[1], "valid")
        for name in a[0]:
            if name == "reward":
                assert torch.allclose(a[0][name], b[0][name], rtol=1e-6, atol=1e-6)
            else:
                assert_equal(a[0][name], b[0][name], f"step {t} {name}")


@pytest.mark.parametrize("mode", ["next_step", "disabled"])
@pytest.mark.parametrize("cls", [ReplayBuffer, PrioritizedReplayBuffer])
def test_numpy_fast_path_equals_the_checked_path(cls, mode):
    """gymnasium's numpy inputs take a fast path on the CPU (metadata checks, one compiled call);
    tensors take the fully checked one: the stored rows, keys and masks are the same."""
    E = 3
    fast = cls(200, SPEC, n_step=3, gamma=0.9, num_envs=E, autoreset_mode=mode)
    slow = cls(200, SPEC, n_step=3, gamma=0.9, num_envs=E, autoreset_mode=mode)
    if kernels.available("numba"):  # (the fast path belongs to the numba backend)
        def checked(*a, **k):
            raise AssertionError("numpy inputs took the checked path")
        fast.nstep._check = checked
    for tr in stream(60, E, seed=4):
        np_tr = {k: v.numpy() for k, v in tr.items()}
        np_tr["reward"] = np_tr["reward"].astype(np.float64)  # as gymnasium gives it
        a = fast.step(**np_tr, info={})
        b = slow.step(**tr)
        assert (a is None) == (b is None)
        if a is not None:
            assert_equal(a, b, "keys")
    assert_equal(fast.flush(), slow.flush(), "flush keys")
    for name in fast.spec:
        assert_equal(fast.storage.data[name], slow.storage.data[name], name)
    if cls is PrioritizedReplayBuffer:
        assert_equal(fast.tree.leaves, slow.tree.leaves, "priorities")


@pytest.mark.parametrize("mode", ["next_step", "same_step", "disabled"])
@pytest.mark.parametrize("n", [1, 3, 5])
def test_nstep_backends_emit_the_same_rows(mode, n):
    """numba (CPU), Triton (under the interpreter here) and the torch twins: bit-identical rows,
    rewards included (each sums the return left to right in float64)."""
    backends = ["torch"] + [b for b in ("numba", "triton") if kernels.available(b)
                            and (b != "triton" or kernels.triton_runs_on_cpu())]
    ns = [NStep(4, n, 0.9, spec=SPEC, autoreset_mode=mode, backend=b) for b in backends]
    for t, tr in enumerate(stream(30, 4, seed=n)):
        kw = {"final_obs": tr["next_obs"] * 7} if mode == "same_step" else {}
        outs = [x.step(**tr, **kw) for x in ns]
        assert all((o is None) == (outs[0] is None) for o in outs)
        if outs[0] is None:
            continue
        for b, o in zip(backends[1:], outs[1:]):
            assert_equal(o[1], outs[0][1], f"{b} valid")
            for k in outs[0][0]:
                assert_equal(o[0][k], outs[0][0][k], f"{b} step {t} {k}")
    flushed = [x.flush() for x in ns]
    assert all((o is None) == (n == 1) for o in flushed)  # (n = 1: nothing is ever pending)
    for b, o in zip(backends[1:], flushed[1:] if n > 1 else []):
        for k in flushed[0][0]:
            assert_equal(o[0][k], flushed[0][0][k], f"{b} flush {k}")

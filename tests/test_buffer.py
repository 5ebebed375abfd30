"""Ring storage and bad input: every rejected call names the problem and changes nothing."""
import copy

import numpy as np
import pytest
import torch

from conftest import assert_equal
from gpu_replay import PrioritizedReplayBuffer, ReplayBuffer, SumTree, linear_beta

SPEC = {"obs": ((4, 3), torch.uint8), "action": ((), torch.int64), "reward": ((), torch.float32),
        "aux": ((2,), torch.float32)}


def batch(n, start=0):
    k = torch.arange(start, start + n)
    return {"obs": (k % 256).to(torch.uint8).view(n, 1, 1).expand(n, 4, 3).clone(), "action": k,
            "reward": k.float(), "aux": torch.stack([k.float(), -k.float()], 1)}


def snapshot(rb):
    out = {f"data.{k}": v.clone() for k, v in rb.storage.data.items()}
    if isinstance(rb, PrioritizedReplayBuffer):
        st = rb.tree.state
        out.update({f"tree.{k}": getattr(st, k).clone() for k in ("sums", "mins", "maxes", "counters")})
    out["keys"] = rb.sampler.counter.t.clone()
    out["len"] = len(rb)
    return out


def assert_unchanged(rb, snap):
    now = snapshot(rb)
    assert now.keys() == snap.keys()
    for k, v in snap.items():
        if isinstance(v, torch.Tensor):
            assert_equal(now[k], v, k)
        else:
            assert now[k] == v, k


@pytest.mark.parametrize("cls", [ReplayBuffer, PrioritizedReplayBuffer])
def test_ring_wraps_and_keys_are_monotonic(cls):
    rb = cls(10, SPEC, generator=torch.Generator().manual_seed(0))
    k1 = rb.add(batch(7))
    k2 = rb.add(batch(6, 7))  # crosses the end of the ring
    assert k1.tolist() == list(range(7)) and k2.tolist() == list(range(7, 13))
    assert len(rb) == 10
    rows = rb.storage.data["action"]
    assert rows.tolist() == [10, 11, 12, 3, 4, 5, 6, 7, 8, 9]
    k3 = rb.add(batch(25, 13))  # larger than the capacity: its last 10 rows survive
    assert k3.tolist() == list(range(13, 38))
    assert sorted(rows.tolist()) == list(range(28, 38))
    assert all(rows[k % 10].item() == k for k in range(28, 38))
    s = rb.sample(64)
    assert_equal(s["action"], s.keys, "sampled row is the row of its key")
    assert_equal(s["aux"][:, 1], -s.keys.float(), "aux")
    assert (s.keys >= 28).all() and (s.keys < 38).all()
    if cls is PrioritizedReplayBuffer:
        assert rb.tree.check() == 0.0


def test_numpy_input_and_safe_casts():
    rb = PrioritizedReplayBuffer(8, SPEC)
    b = {k: v.numpy() for k, v in batch(3).items()}
    b["reward"] = b["reward"].astype(np.float64)  # gymnasium gives float64 rewards
    b["action"] = b["action"].astype(np.int32)
    keys = rb.add(b)
    assert keys.dtype == torch.int64 and keys.tolist() == [0, 1, 2]
    assert rb.storage.data["reward"].dtype == torch.float32
    assert rb.storage.data["reward"][:3].tolist() == [0.0, 1.0, 2.0]


def test_uniform_sampling_covers_only_stored_rows():
    rb = ReplayBuffer(100, {"x": ((), torch.int64)}, generator=torch.Generator().manual_seed(0))
    rb.add({"x": torch.arange(30)})
    s = rb.sample(3000)
    assert s.weights is None and s.priorities is None
    counts = torch.bincount(s["x"], minlength=30)
    assert (counts > 50).all() and counts.sum() == 3000


BAD_BATCHES = [
    (lambda b: b.pop("reward"), ValueError, "missing field"),
    (lambda b: b.update(extra=torch.zeros(3)), ValueError, "unknown field"),
    (lambda b: b.update(obs=torch.zeros(3, 4, 4, dtype=torch.uint8)), ValueError, r"batch\['obs'\].*shape"),
    (lambda b: b.update(obs=torch.zeros(3, 12, dtype=torch.uint8)), ValueError, r"batch\['obs'\].*shape"),
    (lambda b: b.update(obs=torch.zeros(3, 4, 3)), TypeError, r"batch\['obs'\].*dtype"),
    (lambda b: b.update(action=torch.zeros(3)), TypeError, r"batch\['action'\].*dtype"),
    (lambda b: b.update(reward=torch.zeros(4)), ValueError, r"batch\['reward'\].*batch size"),
    (lambda b: b.update(reward=[0.0, 1.0, 2.0]), TypeError, r"batch\['reward'\].*Tensor"),
    (lambda b: b.update(reward=torch.zeros(3, 1)), ValueError, r"batch\['reward'\].*shape"),
]


@pytest.mark.parametrize("cls", [ReplayBuffer, PrioritizedReplayBuffer])
@pytest.mark.parametrize("mutate,exc,match", BAD_BATCHES)
def test_bad_batches_raise_and_change_nothing(cls, mutate, exc, match):
    rb = cls(8, SPEC)
    rb.add(batch(5))
    snap = snapshot(rb)
    b = batch(3, 5)
    mutate(b)
    with pytest.raises(exc, match=match):
        rb.add(b)
    assert_unchanged(rb, snap)


@pytest.mark.parametrize("cls", [ReplayBuffer, PrioritizedReplayBuffer])
def test_bad_add_calls(cls):
    rb = cls(8, SPEC)
    rb.add(batch(5))
    snap = snapshot(rb)
    with pytest.raises(TypeError, match="batch"):
        rb.add([1, 2, 3])
    with pytest.raises(ValueError, match="at least one row"):
        rb.add({k: v[:0] for k, v in batch(1).items()})
    if cls is PrioritizedReplayBuffer:
        with pytest.raises(TypeError, match="valid.*bool"):
            rb.add(batch(3), valid=torch.ones(3))
        with pytest.raises(ValueError, match=r"valid.*\[3\]"):
            rb.add(batch(3), valid=torch.ones(4, dtype=torch.bool))
    assert_unchanged(rb, snap)


def test_bad_update_and_sample_calls_raise_and_change_nothing():
    rb = PrioritizedReplayBuffer(8, SPEC)
    with pytest.raises(ValueError, match="empty"):
        rb.sample(4)
    rb.add(batch(5))
    snap = snapshot(rb)
    cases = [
        (lambda: rb.update_priorities(torch.tensor([1, 2], dtype=torch.int32), torch.ones(2)), TypeError,
         "keys.*int64"),
        (lambda: rb.update_priorities(torch.tensor([[1, 2]]), torch.ones(2)), ValueError, r"keys.*shape"),
        (lambda: rb.update_priorities(torch.tensor([], dtype=torch.int64), torch.ones(0)), ValueError, "keys"),
        (lambda: rb.update_priorities(torch.tensor([1, 2]), torch.ones(3)), ValueError, r"td_errors.*\[2\]"),
        (lambda: rb.update_priorities(torch.tensor([1, 2]), torch.ones(2, dtype=torch.int64)), TypeError,
         "td_errors.*floating"),
        (lambda: rb.update_priorities("1,2", torch.ones(2)), TypeError, "keys"),
        (lambda: rb.sample(0), ValueError, "batch_size"),
        (lambda: rb.sample(-3), ValueError, "batch_size"),
        (lambda: rb.sample(2.5), TypeError, "batch_size"),
        (lambda: rb.sample(4, beta=1.5), ValueError, "beta"),
        (lambda: rb.sample(4, beta=-0.1), ValueError, "beta"),
        (lambda: rb.sample(4, beta=float("nan")), ValueError, "beta"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()
        assert_unchanged(rb, snap)
    rb.update_priorities(torch.tensor([1, 2]), torch.ones(2, 1))  # [B, 1] is accepted


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"alpha": -0.1}, ValueError, "alpha"),
    ({"alpha": float("inf")}, ValueError, "alpha"),
    ({"eps": 0.0}, ValueError, "eps"),
    ({"eps": -1e-6}, ValueError, "eps"),
    ({"fanout": 12}, ValueError, "fanout"),
    ({"fanout": 1}, ValueError, "fanout"),
    ({"backend": "cuda"}, ValueError, "backend"),
    ({"normalize": "max"}, ValueError, "normalize"),
])
def test_bad_constructor_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        PrioritizedReplayBuffer(8, SPEC, **kwargs)


@pytest.mark.parametrize("capacity,spec,exc,match", [
    (0, SPEC, ValueError, "capacity"),
    (8.0, SPEC, TypeError, "capacity"),
    (8, {}, TypeError, "spec"),
    (8, {"x": (3,)}, TypeError, r"spec\['x'\]"),
    (8, {"x": ((-1,), torch.float32)}, ValueError, r"spec\['x'\]"),
    (8, {"x": ((3,), "not-a-dtype")}, TypeError, r"spec\['x'\]"),
])
def test_bad_specs(capacity, spec, exc, match):
    with pytest.raises(exc, match=match):
        ReplayBuffer(capacity, spec)


def test_triton_backend_needs_cuda_or_the_interpreter(monkeypatch):
    from gpu_replay import kernels
    if not kernels.available("triton"):
        pytest.skip("triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend='triton'.*CUDA"):
        SumTree(8, backend="triton", device="cpu")
    assert SumTree(8, backend="auto", device="cpu").backend == ("numba" if kernels.available("numba") else "torch")
    with pytest.raises(ValueError, match="backend='numba'.*CPU"):
        SumTree(8, backend="numba", device="meta")


def test_numpy_dtype_spec_and_sumtree_add_checks():
    rb = ReplayBuffer(4, {"x": ((2,), np.float32)})
    assert rb.spec["x"] == ((2,), torch.float32)
    t = SumTree(4)
    with pytest.raises(ValueError, match="n"):
        t.add(0)


def test_linear_beta_is_clamped():
    assert linear_beta(0, 10) == 0.4
    assert linear_beta(5, 10) == pytest.approx(0.7)
    assert linear_beta(10 ** 9, 10) == 1.0
    assert linear_beta(-5, 10) == 0.4
    with pytest.raises(ValueError, match="beta0"):
        linear_beta(0, 10, beta0=1.5)
    with pytest.raises(ValueError, match="total_steps"):
        linear_beta(0, 0)

"""Prioritized-replay semantics against independent references (torch backend on CPU,
plus the Triton backend through the interpreter where it is cheap)."""
import math

import numpy as np
import pytest
import torch

from conftest import TRITON_DEVICE, assert_equal
from gpu_replay import PrioritizedReplayBuffer, SumTree, kernels as K
from gpu_replay.kernels.refresh import rebuild_torch

BACKENDS = [("cpu", "torch")] + ([(TRITON_DEVICE, "triton")] if K.available("triton") else []) + \
    ([("cpu", "numba")] if K.available("numba") else [])


def set_priorities(tree: SumTree, p: torch.Tensor):
    """Put exact leaf values p (already p**alpha) into the first len(p) slots via updates
    with alpha=1-equivalent: write leaves directly, then refresh ancestors."""
    n = p.shape[0]
    tree.state.leaves[:n] = p.to(tree.device)
    rebuild_torch(tree.state)


def draw_counts(tree: SumTree, n_draws: int, B: int, seed: int) -> np.ndarray:
    g = torch.Generator(device=tree.device).manual_seed(seed)
    counts = torch.zeros(tree.capacity, dtype=torch.int64)
    for _ in range(n_draws // B):
        s = tree.sample(B, generator=g)
        slots = (s.keys % tree.capacity).cpu()
        counts += torch.bincount(slots, minlength=tree.capacity)
    return counts.numpy()


def chi_square_p(counts: np.ndarray, probs: np.ndarray) -> float:
    """Chi-square goodness of fit, pooling cells (sorted by probability) until each
    expects at least 20 draws."""
    n = counts.sum()
    order = np.argsort(probs)
    obs, exp = [], []
    co, ce = 0, 0.0
    for i in order:
        co += counts[i]
        ce += probs[i] * n
        if ce >= 20:
            obs.append(co), exp.append(ce)
            co, ce = 0, 0.0
    if ce > 0:
        obs[-1] += co
        exp[-1] += ce
    obs, exp = np.asarray(obs, dtype=np.float64), np.asarray(exp, dtype=np.float64)
    stat = float(((obs - exp) ** 2 / exp).sum())
    dof = len(obs) - 1  # chi-square survival function: Q(dof/2, stat/2) (no scipy needed)
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


@pytest.mark.parametrize("kind", ["uniform", "heavy", "partial"])
@pytest.mark.parametrize("B", [1, 256])
def test_sampling_distribution_matches_p_over_sum(kind, B):
    rng = np.random.default_rng(42)
    cap = 1000
    tree = SumTree(cap, fanout=8)
    if kind == "uniform":
        tree.add(cap)
        p = rng.uniform(0.1, 1.0, cap)
    elif kind == "heavy":  # log-uniform over 12 decades
        tree.add(cap)
        p = 10.0 ** rng.uniform(-12, 0, cap)
    else:  # partly filled: 300 of 1000 slots, some zero
        tree.add(300)
        p = np.zeros(cap)
        p[:300] = rng.uniform(0.0, 2.0, 300)
        p[rng.choice(300, 40, replace=False)] = 0.0
    set_priorities(tree, torch.from_numpy(p))
    counts = draw_counts(tree, 200_000 if B > 1 else 10_000, B, seed=3)
    probs = p / p.sum()
    assert counts[p == 0].sum() == 0, "a zero-priority or unfilled slot was sampled"
    pval = chi_square_p(counts, probs)
    assert pval > 1e-3, f"chi-square p={pval:.2e}"


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_zero_priority_never_returned_even_at_the_top_of_the_mass(device, backend):
    cap, fanout = 37, 4
    tree = SumTree(cap, fanout=fanout, device=device, backend=backend)
    tree.add(30)
    p = torch.zeros(cap, dtype=torch.float64)
    p[[0, 5, 17, 22]] = torch.tensor([1e-300, 3.0, 1e-12, 0.7], dtype=torch.float64)
    set_priorities(tree, p)
    top = 1.0 - 2.0 ** -53
    for r_val in (0.0, 0.5, top):
        for B in (1, 3, 64):
            r = torch.full((B,), r_val, dtype=torch.float64, device=device)
            slots, keys, prio, w = tree.ops.sample(tree.state, tree.scratch, tree.counter, r, 0.4)
            assert (prio > 0).all(), (r_val, B, slots)
            assert set(slots.tolist()) <= {0, 5, 17, 22}
    # a total that rounds: every leaf tiny but one, u right at the top
    p2 = torch.full((cap,), 1e-17, dtype=torch.float64)
    p2[-1] = 0.0
    p2[3] = 1.0
    set_priorities(tree, p2)
    tree.add(10)  # fill the last slots too (they enter with the max priority)...
    set_priorities(tree, p2)  # ...then force the test values back
    r = torch.full((7,), top, dtype=torch.float64, device=device)
    slots, keys, prio, w = tree.ops.sample(tree.state, tree.scratch, tree.counter, r, 0.4)
    assert (prio > 0).all()
    assert cap - 1 not in slots.tolist()


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_tree_equals_float64_recomputation_after_many_updates(device, backend):
    interpreted = backend == "triton" and device == "cpu"  # the Triton interpreter is slow
    cap = 97 if interpreted else 777
    n_calls = 60 if interpreted else 3000
    tree = SumTree(cap, fanout=4, alpha=0.7, device=device, backend=backend)
    g = torch.Generator().manual_seed(5)
    model = {}
    tree.add(cap + 50)
    lo = tree.counter.added() - cap
    for key in range(lo, tree.counter.added()):
        model[key % cap] = None  # entered with the max priority
    for step in range(n_calls):
        B = int(torch.randint(1, 64, (1,), generator=g))
        keys = torch.randint(lo, tree.counter.added(), (B,), generator=g)
        if B > 4:
            keys[: B // 4] = keys[B // 4: 2 * (B // 4)]  # duplicates
        td = torch.randn(B, generator=g, dtype=torch.float64) * 10
        tree.update(keys.to(device), td.to(device))
        for k, d in zip(keys.tolist(), td.tolist()):
            model[k % cap] = d  # last write wins
        if step % 500 == 0 or step == n_calls - 1:
            assert tree.check() == 0.0
    leaves = tree.leaves.cpu()
    for slot, d in model.items():
        if d is not None:
            want = (abs(d) + tree.eps) ** tree.alpha
            assert math.isclose(leaves[slot].item(), want, rel_tol=1e-12), (slot, d)
    assert tree.check() == 0.0


def test_last_write_of_a_duplicate_key_wins():
    tree = SumTree(10, fanout=2, alpha=1.0)
    tree.add(10)
    tree.update(torch.tensor([3, 3, 4, 3, 4]), torch.tensor([1.0, 2.0, 5.0, 7.0, 0.5]))
    assert math.isclose(tree.leaves[3].item(), 7.0 + 1e-6, rel_tol=1e-12)
    assert math.isclose(tree.leaves[4].item(), 0.5 + 1e-6, rel_tol=1e-12)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_stale_keys_are_dropped_not_applied_to_the_newer_row(device, backend):
    spec = {"x": ((), torch.float32)}
    rb = PrioritizedReplayBuffer(8, spec, device=device, backend=backend, fanout=2,
                                 generator=torch.Generator(device=device).manual_seed(0))
    rb.add({"x": torch.arange(8, dtype=torch.float32)})
    s = rb.sample(4)
    old_keys = s.keys.clone()
    rb.add({"x": torch.arange(8, 16, dtype=torch.float32)})  # overwrites every slot
    before = rb.tree.leaves.clone()
    rb.update_priorities(old_keys, torch.full((4,), 100.0))
    assert_equal(rb.tree.leaves, before, "leaves after stale update")
    assert rb.stats()["stale_dropped"] == 4
    # future keys (never handed out) and negative keys are dropped too
    rb.update_priorities(torch.tensor([16, 99, -1]), torch.ones(3))
    assert_equal(rb.tree.leaves, before, "leaves after future/negative keys")
    assert rb.stats()["stale_dropped"] == 7
    # a live key is applied
    rb.update_priorities(torch.tensor([15]), torch.tensor([2.0]))
    assert math.isclose(rb.tree.leaves[7].item(), (2.0 + 1e-6) ** 0.6, rel_tol=1e-12)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_nan_inf_replaced_by_running_max_and_counted(device, backend):
    tree = SumTree(16, fanout=4, alpha=0.5, device=device, backend=backend)
    tree.add(16)
    tree.update(torch.tensor([0, 1]), torch.tensor([3.0, -8.0]))  # |-8| is a valid TD error
    m = 8.0 + 1e-6
    assert tree.stats()["max_raw_priority"] == pytest.approx(m, rel=1e-15)
    tree.update(torch.tensor([2, 3, 4, 5]), torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0]))
    leaves = tree.leaves.cpu()
    for slot in (2, 3, 4):
        assert math.isclose(leaves[slot].item(), m ** 0.5, rel_tol=1e-13)
    assert math.isclose(leaves[1].item(), m ** 0.5, rel_tol=1e-13)
    assert math.isclose(leaves[5].item(), (1.0 + 1e-6) ** 0.5, rel_tol=1e-13)
    st = tree.stats()
    assert st["sanitized"] == 3 and st["max_raw_priority"] == pytest.approx(m, rel=1e-15)
    assert tree.check() == 0.0
    assert torch.isfinite(tree.state.sums[:-1]).all()


def test_strict_mode_raises_and_changes_nothing():
    rb = PrioritizedReplayBuffer(8, {"x": ((), torch.float32)}, strict=True)
    rb.add({"x": torch.zeros(8)})
    before = rb.tree.state.sums.clone()
    with pytest.raises(ValueError, match="td_errors"):
        rb.update_priorities(torch.tensor([0, 1]), torch.tensor([1.0, float("nan")]))
    assert_equal(rb.tree.state.sums, before, "sums")
    assert rb.stats()["sanitized"] == 0


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("normalize", ["global", "batch"])
def test_is_weights_equal_the_formula_in_float64(device, backend, normalize):
    cap = 300
    rb = PrioritizedReplayBuffer(cap, {"x": ((), torch.float32)}, device=device, backend=backend, fanout=8,
                                 alpha=0.6, normalize=normalize,
                                 generator=torch.Generator(device=device).manual_seed(1))
    rb.add({"x": torch.zeros(200)})  # partly filled: N = 200
    keys = torch.arange(200)
    td = torch.from_numpy(np.random.default_rng(0).lognormal(0, 2, 200))
    rb.update_priorities(keys, td)
    beta = 0.4
    s = rb.sample(128, beta=beta)
    # independent float64 computation from the TD errors
    p = (np.abs(td.numpy()) + 1e-6) ** 0.6
    P = p / p.sum()
    N = 200
    w_all = (N * P) ** -beta
    idx = s.keys.cpu().numpy()
    w = w_all[idx]
    w = w / (w_all.max() if normalize == "global" else w.max())
    np.testing.assert_allclose(s.weights.cpu().numpy(), w, rtol=2e-6)
    np.testing.assert_allclose(s.priorities.cpu().numpy(), p[idx], rtol=1e-12)
    assert s.weights.dtype == torch.float32 and s.weights.device.type == torch.device(device).type


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_new_rows_enter_with_the_max_priority(device, backend):
    rb = PrioritizedReplayBuffer(20, {"x": ((), torch.float32)}, device=device, backend=backend, fanout=4,
                                 alpha=0.6)
    rb.add({"x": torch.zeros(4)})
    assert torch.allclose(rb.tree.leaves[:4].cpu(), torch.ones(4, dtype=torch.float64))  # 1.0 ** alpha
    rb.update_priorities(torch.tensor([0, 1, 2, 3]), torch.tensor([0.001, 5.0, 0.2, 0.0]))
    rb.add({"x": torch.zeros(3)}, valid=torch.tensor([True, False, True]))
    m = 5.0 + 1e-6
    leaves = rb.tree.leaves.cpu()
    assert math.isclose(leaves[4].item(), m ** 0.6, rel_tol=1e-13)  # alpha applied once, to m
    assert leaves[5].item() == 0.0  # invalid row: stored, never sampled
    assert math.isclose(leaves[6].item(), m ** 0.6, rel_tol=1e-13)
    # td errors all tiny: the running max does not fall, new rows still enter high
    rb.update_priorities(torch.arange(7), torch.full((7,), 1e-4))
    rb.add({"x": torch.zeros(1)})
    assert math.isclose(rb.tree.leaves[7].item(), m ** 0.6, rel_tol=1e-13)


def test_seeded_generator_reproduces_batches():
    def run(seed):
        rb = PrioritizedReplayBuffer(100, {"x": ((2,), torch.float32)}, generator=torch.Generator().manual_seed(seed))
        rb.add({"x": torch.arange(200, dtype=torch.float32).view(100, 2)})
        rb.update_priorities(torch.arange(100), torch.linspace(0, 3, 100))
        return [rb.sample(32, beta=0.5).keys for _ in range(3)]
    a, b, c = run(9), run(9), run(10)
    for x, y in zip(a, b):
        assert_equal(x, y, "same seed")
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_sampled_rows_are_the_rows_of_their_keys():
    rb = PrioritizedReplayBuffer(50, {"k": ((), torch.int64), "obs": ((3,), torch.float32)},
                                 generator=torch.Generator().manual_seed(0), fanout=4)
    for start in range(0, 170, 17):
        k = torch.arange(start, start + 17)
        assert_equal(rb.add({"k": k, "obs": k.float().unsqueeze(1).repeat(1, 3)}), k, "keys")
    s = rb.sample(500)
    assert_equal(s["k"], s.keys, "row key")
    assert (s.keys >= 170 - 50).all()
    assert_equal(s["obs"][:, 2], s.keys.float(), "row obs")


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_half_precision_td_errors(device, backend):
    tree = SumTree(8, fanout=2, device=device, backend=backend)
    tree.add(8)
    for dt in (torch.float16, torch.bfloat16):
        tree.update(torch.tensor([1, 2]), torch.tensor([2.0, -0.5], dtype=dt))
        assert math.isclose(tree.leaves[1].item(), (2.0 + 1e-6) ** 0.6, rel_tol=1e-12)
    assert tree.check() == 0.0


def test_sampling_when_every_row_is_invalid_raises_on_cpu():
    rb = PrioritizedReplayBuffer(8, {"x": ((), torch.float32)})
    rb.add({"x": torch.zeros(3)}, valid=torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="priority 0"):
        rb.sample(2)
    rb.add({"x": torch.zeros(1)})
    assert rb.sample(4).keys.tolist() == [3, 3, 3, 3]

"""The sharded buffer (``gpu_replay.distributed``) on Gloo, with 2 and 4 processes.

Each test runs its body in forked worker processes (``tests/_dist.py``) and checks, in
this process, what the ranks returned (plain lists) against references built here: one
``SumTree`` holding the union of the shards (bit-exact draws and weights), float64
formulas over the union, and per-shard replays of the routed updates.
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist

from _dist import run_distributed
from gpu_replay import PrioritizedReplayBuffer, SumTree
from gpu_replay.kernels.refresh import rebuild_torch

C, K = 16, 4  # shard capacity = K**2: the union of <= K shards is one K-ary tree over the shard trees
SPEC = {"obs": ((2,), torch.float32), "action": ((), torch.int64), "done": ((), torch.bool)}
ALPHA, EPS = 0.6, 1e-6
# rows added per rank (shard 0 wraps its ring; an empty shard with 4 ranks) and rows added invalid
FILLS = {2: [21, 5], 4: [37, 3, 0, 11]}
INVALID = {2: [0, 2], 4: [0, 1, 0, 3]}
SEED = 7


@pytest.fixture(scope="module", autouse=True)
def _compile_in_parent():
    """Compile the numba ops once here: the forked ranks inherit them (else each rank loads
    them again, ~1 s)."""
    rb = PrioritizedReplayBuffer(16, SPEC, fanout=K)
    k = rb.add(rows(3, 0, 0))
    rb.tree.find(torch.tensor([0.5], dtype=torch.float64))
    rb.update_priorities(k, torch.ones(3))
    rb.sample(2)


def rows(n: int, rank: int, first: int) -> dict:
    """n rows whose obs say (owner rank, local key): a gathered row can be traced back."""
    return {"obs": torch.stack([torch.full((n,), float(rank)), torch.arange(first, first + n, dtype=torch.float32)], 1),
            "action": torch.arange(first, first + n) * 10 + rank, "done": torch.arange(n) % 2 == 1}


def make(rank, ws, generic=False, **kw):
    """A shard of capacity C, fanout K. ``generic``: take the device path (torch ops, the torch
    power) that CUDA shards take, instead of the CPU's numpy/numba one."""
    from gpu_replay.distributed import ShardedPrioritizedReplayBuffer
    rb = ShardedPrioritizedReplayBuffer(C, SPEC, seed=SEED, fanout=K, alpha=ALPHA, eps=EPS, **kw)
    if generic:
        rb._host, rb._pow_nb = False, None
    return rb


def fill(rb, rank, ws, td_seed=0):
    """Shards of very different fill levels and totals: rank r adds FILLS[ws][r] rows (the
    last INVALID[ws][r] invalid), then every rank sets heavy-tailed priorities on its own live
    rows through the (collective) update."""
    n, bad = FILLS[ws][rank], INVALID[ws][rank]
    keys = torch.empty(0, dtype=torch.int64)
    if n:
        valid = torch.arange(n) < n - bad
        keys = rb.add(rows(n, rank, 0), valid=valid)
    live = keys[-C:]
    g = torch.Generator().manual_seed(100 + rank + td_seed)
    td = torch.exp(torch.randn(live.shape[0], generator=g, dtype=torch.float64) * 3.0) * (10.0 ** rank)
    rb.update_priorities(live, td)
    return keys


def leaves(rb) -> list[float]:
    return rb.tree.leaves.tolist()


def union_tree(shard_leaves: list[list[float]]) -> SumTree:
    """One tree over the union: shard r's slot s is slot r * C + s."""
    ws = len(shard_leaves)
    t = SumTree(ws * C, fanout=K, alpha=ALPHA, eps=EPS, backend="torch")
    t.state.leaves.copy_(torch.tensor([p for lv in shard_leaves for p in lv], dtype=torch.float64))
    rebuild_torch(t.state)
    t.counter.set(ws * C, 0)
    return t


def union_slots(keys: list[int], ws: int) -> list[int]:
    return [(k % ws) * C + (k // ws) % C for k in keys]


def batch_out(b) -> dict | None:
    if b is None:
        return None
    return {"keys": b.keys.tolist(), "prio": b.priorities.tolist(), "w": b.weights.tolist(),
            "obs": b["obs"].tolist(), "action": b["action"].tolist(), "done": b["done"].tolist()}


def check_rows_match_keys(out: dict, ws: int):
    """Every gathered row is the row of its key (the row exchange kept rows and keys together)."""
    for k, obs, a, d in zip(out["keys"], out["obs"], out["action"], out["done"]):
        owner, local = k % ws, k // ws
        assert obs == [float(owner), float(local)], (k, obs)
        assert a == local * 10 + owner and d == (local % 2 == 1), (k, a, d)


# ----------------------------------------------------------------------------- exactness
def _sample_body(rank, ws, B, normalize, generic):
    rb = make(rank, ws, generic, normalize=normalize)
    fill(rb, rank, ws)
    lv = leaves(rb)
    a = rb.sample(B, beta=0.5)  # every rank a learner
    b = rb.sample(B, beta=0.7, dst=ws - 1)  # one learner
    return {"leaves": lv, "a": batch_out(a), "b": batch_out(b)}


@pytest.mark.parametrize("ws,generic", [(2, False), (4, False), (2, True), (4, True)])
@pytest.mark.parametrize("normalize", ["global", "batch"])
def test_batches_are_bit_identical_to_one_tree_over_the_union(ws, normalize, generic):
    """Both modes draw exactly what one K-ary tree holding every shard's priorities draws
    from the same strata (slots, priorities and IS weights, bit for bit), never a row of an
    empty shard or an invalid row; rank q's batch in mode (a) takes strata values r[q*B:(q+1)*B] (its own draws)."""
    B = 24
    res = run_distributed(_sample_body, ws, B, normalize, generic)
    tree = union_tree([r["leaves"] for r in res])
    g = torch.Generator().manual_seed(SEED)
    r_a = torch.rand(ws * B, generator=g, dtype=torch.float64)
    r_b = torch.rand(B, generator=g, dtype=torch.float64)
    for q in range(ws):
        got = res[q]["a"]
        r_q = r_a[q * B:(q + 1) * B]
        slots, _, prio, w = tree.ops.sample(tree.state, tree.scratch, tree.counter, r_q, 0.5, normalize)
        assert union_slots(got["keys"], ws) == slots.tolist(), f"rank {q}"
        assert got["prio"] == prio.tolist() and got["w"] == w.tolist(), f"rank {q}"
        assert all(p > 0 for p in got["prio"])
        check_rows_match_keys(got, ws)
    slots, _, prio, w = tree.ops.sample(tree.state, tree.scratch, tree.counter, r_b, 0.7, normalize)
    got = res[ws - 1]["b"]
    assert union_slots(got["keys"], ws) == slots.tolist()
    assert got["prio"] == prio.tolist() and got["w"] == w.tolist()
    assert [r["b"] for r in res[:-1]] == [None] * (ws - 1)
    owners = {k % ws for r in res for k in r["a"]["keys"] + (r["b"]["keys"] if r["b"] else [])}
    assert owners <= {r for r in range(ws) if FILLS[ws][r] > INVALID[ws][r]}  # never an empty or all-invalid shard


def _weights_body(rank, ws, B):
    rb = make(rank, ws)
    fill(rb, rank, ws)
    rb_b = make(rank, ws, normalize="batch")
    fill(rb_b, rank, ws)
    s = rb.sample(B, beta=0.6)
    s_b = rb_b.sample(B, beta=0.6)
    return {"leaves": leaves(rb), "g": batch_out(s), "b": batch_out(s_b), "lb": leaves(rb_b)}


@pytest.mark.parametrize("ws", [2, 4])
def test_is_weights_match_a_float64_formula_over_the_union(ws):
    """w_i = (N P(i))**-beta / max_j (N P(j))**-beta in float64 over the union of the shards
    (global), or divided by the batch's max weight (batch)."""
    res = run_distributed(_weights_body, ws, 64)
    for key, lkey, norm in (("g", "leaves", "global"), ("b", "lb", "batch")):
        p = np.array([x for r in res for x in r[lkey]], dtype=np.float64)
        live = p[p > 0]
        N, T = live.size, live.sum()
        wmax = (N * live / T) ** -0.6
        for r in res:
            out = r[key]
            P = np.array(out["prio"]) / T
            want = (N * P) ** -0.6
            want /= wmax.max() if norm == "global" else want.max()
            np.testing.assert_allclose(out["w"], want, rtol=2e-6, err_msg=f"{norm}")
            assert max(out["w"]) <= 1.0


def _chi_body(rank, ws, B, calls):
    rb = make(rank, ws)
    fill(rb, rank, ws)
    counts = torch.zeros(ws * C, dtype=torch.int64)
    local_counts = torch.zeros(ws * C, dtype=torch.int64)
    g_local = torch.Generator().manual_seed(rank)  # (the shared generator must stay in step on every rank)
    for _ in range(calls):
        s = rb.sample(B, beta=0.4)
        counts += torch.bincount(torch.tensor(union_slots(s.keys.tolist(), ws)), minlength=ws * C)
        if len(rb):  # the negative control: each rank sampling only its own shard
            loc = rb.local.tree.sample(B, generator=g_local)
            counts_l = (loc.keys % C) + rank * C
            local_counts += torch.bincount(counts_l, minlength=ws * C)
    return {"leaves": leaves(rb), "counts": counts.tolist(), "local": local_counts.tolist()}


def chi_square_p(counts, probs) -> float:
    """Chi-square goodness of fit (cells pooled until each expects >= 20); the p-value from
    the regularized upper incomplete gamma (no scipy needed)."""
    counts, probs = np.asarray(counts, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    n = counts.sum()
    obs, exp, co, ce = [], [], 0.0, 0.0
    for i in np.argsort(probs):
        co += counts[i]
        ce += probs[i] * n
        if ce >= 20:
            obs.append(co), exp.append(ce)
            co, ce = 0.0, 0.0
    if ce > 0 or co > 0:
        obs[-1] += co
        exp[-1] += ce
    obs, exp = np.array(obs), np.array(exp)
    stat = float(((obs - exp) ** 2 / exp).sum())
    dof = len(obs) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def test_chi_square_helper_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    counts, probs = [30, 50, 20, 100], [0.15, 0.25, 0.15, 0.45]
    n = sum(counts)
    assert chi_square_p(counts, probs) == pytest.approx(
        stats.chisquare(counts, [p * n for p in probs]).pvalue, rel=1e-9)


@pytest.mark.parametrize("ws", [2, 4])
def test_every_ranks_draws_follow_p_over_the_union_sum(ws):
    """Chi-square of every rank's draws against p_i / (sum over all shards), with
    heavy-tailed priorities, shards of very different totals and fill levels, and an empty
    shard; each rank sampling only its own shard fails the same test (the test has power)."""
    res = run_distributed(_chi_body, ws, 8, 150)
    p = np.array([x for r in res for x in r["leaves"]], dtype=np.float64)
    probs = p / p.sum()
    for q, r in enumerate(res):
        counts = np.array(r["counts"])
        assert counts[probs == 0].sum() == 0, "a zero-priority or empty slot was drawn"
        pval = chi_square_p(counts, probs)
        assert pval > 1e-3, f"rank {q}: chi-square p={pval:.2e}"
    local = np.sum([r["local"] for r in res], 0)
    assert chi_square_p(local, probs) < 1e-6


@pytest.mark.parametrize("ws", [2, 3, 4])
def test_route_is_the_top_level_of_one_tree_over_the_union(ws):
    """``route`` + each shard's ``find`` == ``find`` on one tree over the union, bit for bit,
    for random masses and the edges: every prefix boundary, the next float below and above
    it, 0, and masses at or past the total (clamped: never an empty shard)."""
    from gpu_replay.distributed import route
    rng = np.random.default_rng(ws)
    for trial in range(20):
        shards = []
        for r in range(ws):
            t = SumTree(C, fanout=K, alpha=ALPHA, eps=EPS, backend="torch")
            n = int(rng.integers(0, C + 1)) if trial % 3 else (0 if r % 2 else C)  # empty shards, gaps
            if n:
                p = np.exp(rng.normal(0, 4, n)) * np.where(rng.random(n) < 0.2, 0.0, 1.0)  # heavy tails, zeros
                t.state.leaves[:n] = torch.from_numpy(p)
                rebuild_torch(t.state)
                t.counter.set(n, 0)
            shards.append(t)
        totals = [float(t.total()) for t in shards]
        if sum(totals) == 0:
            continue
        tree = union_tree([t.leaves.tolist() for t in shards])
        prefix = [sum(totals[:j + 1]) for j in range(ws)]  # left to right, as every rank does
        T = prefix[-1]
        edges = [0.0, T, np.nextafter(T, 0), np.nextafter(T, 2 * T), 2 * T]
        for b in prefix:
            edges += [b, np.nextafter(b, 0), np.nextafter(b, 2 * T)]
        u = np.array(list(rng.random(200) * T) + edges, dtype=np.float64)
        owner, mass = route(u, np.array(prefix))
        want = tree.find(torch.from_numpy(u))
        for o in range(ws):
            sel = owner == o
            if not sel.any():
                continue
            assert totals[o] > 0, "a draw routed to an empty shard"
            got = shards[o].find(torch.from_numpy(mass[sel]))
            assert (got.slots + o * C).tolist() == want.slots[torch.from_numpy(sel)].tolist()
            assert got.priorities.tolist() == want.priorities[torch.from_numpy(sel)].tolist()
        assert bool((want.priorities > 0).all())
        o2, _ = route(np.sort(u), np.array(prefix))
        assert (o2[:-1] <= o2[1:]).all(), "owners must grow with u (rows arrive in draw order)"


# ----------------------------------------------------------------------------- updates
def _update_body(rank, ws, generic=False, big=False):
    rb = make(rank, ws, generic)
    keys = fill(rb, rank, ws)
    before = leaves(rb)
    stats0 = rb.stats()
    plan = update_plan(ws, big)
    mine = plan[rank]
    rb.update_priorities(torch.tensor([k for k, _ in mine], dtype=torch.int64),
                         torch.tensor([d for _, d in mine], dtype=torch.float32))
    after = leaves(rb)
    st = rb.stats()
    new = rb.add(rows(1, rank, 1000))  # enters with the union's running max priority
    return {"keys": keys.tolist(), "before": before, "after": after, "stats0": stats0, "stats": st,
            "new_leaf": rb.tree.leaves[int(new[0] // ws) % C].item(), "gstats": rb.global_stats()}


def update_plan(ws, big=False):
    """Per source rank, (global key, td) pairs: own and other ranks' keys, duplicates within
    a rank and across ranks, stale keys (overwritten in shard 0's ring), keys never handed
    out, invalid rows, NaN and inf, negative TD errors. ``big``: also more pairs for one owner
    than the first exchange carries (64 before any sample): the rest goes in a second one."""
    g = lambda owner, local: local * ws + owner  # noqa: E731
    last = ws - 1
    plan = {r: [] for r in range(ws)}
    plan[0] += [(g(1, 0), 0.5), (g(0, 30), 2.0), (g(0, 2), 9.0), (g(1, 1), -3.0), (g(0, 30), 4.0)]
    plan[last] += [(g(1, 0), 7.0), (g(0, 1), 1.0), (g(1, 1), float("nan")), (g(0, 30), 0.25)]
    plan[1] += [(g(1, 2), float("inf")), (g(0, 500), 1.0), (g(0, 36), 0.125), (g(1, 2), 0.0)]
    if ws == 4:
        plan[2] += [(g(3, 4), 8.0), (g(2, 0), 1.0), (g(3, 10), 2.0), (g(3, 4), 5.0)]
        plan[3] += [(g(3, 4), 6.0)]  # a later source rank: wins over rank 2's writes of this key
    if big:
        plan[0] += [(g(1, i % 3), 0.01 * (i + 1)) for i in range(150)]
        plan[last] += [(g(0, 5 + i % 32), 0.1 * (i + 1)) for i in range(100)]
    return plan


def expected_after(res, ws, big=False):
    """Each shard replayed locally: its keys' (local key, td) pairs in (source rank, position)
    order through one update of a plain PrioritizedReplayBuffer at the shard's state (the
    running max taken over the union first), plus the float64 formula for kept keys."""
    plan = update_plan(ws, big)
    routed = {o: [(k // ws, d) for s in range(ws) for k, d in plan[s] if k % ws == o] for o in range(ws)}
    out = []
    for o in range(ws):
        rb = PrioritizedReplayBuffer(C, SPEC, fanout=K, alpha=ALPHA, eps=EPS, backend="torch")
        n = FILLS[ws][o]
        if n:
            rb.add(rows(n, o, 0), valid=torch.arange(n) < n - INVALID[ws][o])
        rb.tree.state.leaves.copy_(torch.tensor(res[o]["before"], dtype=torch.float64))
        rebuild_torch(rb.tree.state)
        rb.tree.state.maxes.copy_(torch.tensor([res[o]["stats0"]["max_raw_priority"],
                                                res[o]["stats0"]["max_priority"]], dtype=torch.float64))
        if routed[o]:
            rb.update_priorities(torch.tensor([k for k, _ in routed[o]]),
                                 torch.tensor([d for _, d in routed[o]], dtype=torch.float32))
        out.append((rb, routed[o]))
    return out


@pytest.mark.parametrize("ws,generic,big", [(2, False, False), (4, False, False), (4, True, False),
                                            (2, False, True), (4, True, True)])
def test_updates_reach_their_owner_once_with_every_rule(ws, generic, big):
    res = run_distributed(_update_body, ws, generic, big)
    ref = expected_after(res, ws, big)
    total_drop = total_bad = 0
    for o, (rb, routed) in enumerate(ref):
        got = res[o]
        assert got["after"] == rb.tree.leaves.tolist(), f"shard {o}"
        # counted once: each dropped or sanitized item once, on its owner only
        assert got["stats"]["stale_dropped"] - got["stats0"]["stale_dropped"] == rb.stats()["stale_dropped"]
        assert got["stats"]["sanitized"] - got["stats0"]["sanitized"] == rb.stats()["sanitized"]
        total_drop += rb.stats()["stale_dropped"]
        total_bad += rb.stats()["sanitized"]
        # the float64 formula, last write in (source rank, position) order, for kept keys
        added = FILLS[ws][o]
        last = {}
        for k, d in routed:
            last[k] = d
        for k, d in last.items():
            live = max(added - C, 0) <= k < added and got["before"][k % C] > 0
            if not live or not math.isfinite(d):
                continue
            want = (abs(float(np.float32(d))) + EPS) ** ALPHA
            assert got["after"][k % C] == pytest.approx(want, rel=1e-12), (o, k)
        untouched = {s for s in range(C)} - {k % C for k in last}
        assert all(got["after"][s] == got["before"][s] for s in untouched)
    assert total_drop > 0 and total_bad > 0
    # the running maxima are the union's on every shard: a new row enters each with it
    maxes = [(r["stats"]["max_raw_priority"], r["stats"]["max_priority"]) for r in res]
    assert len(set(maxes)) == 1
    assert maxes[0][0] == max(max(r.stats()["max_raw_priority"] for r, _ in ref), res[0]["stats0"]["max_raw_priority"])
    assert {r["new_leaf"] for r in res} == {maxes[0][1]}
    assert res[0]["gstats"]["stale_dropped"] == sum(r["stats"]["stale_dropped"] for r in res)


def test_cross_rank_duplicates_last_source_rank_wins():
    plan = update_plan(4)
    key = 4 * 4 + 3  # local key 4 on rank 3: written by rank 2 (8.0, then 5.0) and rank 3 (6.0)
    res = run_distributed(_update_body, 4)
    assert [d for s in range(4) for k, d in plan[s] if k == key] == [8.0, 5.0, 6.0]
    assert res[3]["after"][4] == pytest.approx((6.0 + EPS) ** ALPHA, rel=1e-12)


# ----------------------------------------------------------------------------- bad input
def _bad_body(rank, ws):
    rb = make(rank, ws)
    fill(rb, rank, ws)
    def snap():
        return leaves(rb), rb.tree.state.maxes.tolist(), rb.stats(), rb.generator.get_state().tolist()

    errors = []

    def attempt(fn):
        try:
            fn()
            errors.append(None)
        except (TypeError, ValueError) as e:
            errors.append(f"{type(e).__name__}: {e}")

    s = rb.sample(4)  # keys to update with
    start = snap()
    attempt(lambda: rb.sample(0 if rank == 1 else 4))  # 0: refused on rank 1
    attempt(lambda: rb.sample(4 + rank))  # batch sizes differ
    attempt(lambda: rb.sample(4, dst=ws if rank == 0 else 0))  # dst out of range on rank 0
    attempt(lambda: rb.sample(4, beta=2.0 if rank == 1 else 0.4))
    attempt(lambda: rb.update_priorities(s.keys.float() if rank == 0 else s.keys, torch.ones(4)))
    attempt(lambda: rb.update_priorities(s.keys, torch.ones(3 if rank == 1 else 4)))
    attempt(lambda: rb.update_priorities(s.keys, None if rank == 1 else torch.ones(4)))
    unchanged = snap() == start
    after = rb.sample(4, beta=0.4)  # the group still works, from the same state
    rb.update_priorities(after.keys, torch.ones(4))
    return {"errors": errors, "unchanged": unchanged, "after": after.keys.tolist()}


def _strict_body(rank, ws):
    rb = make(rank, ws, strict=True)
    fill(rb, rank, ws)
    s = rb.sample(4)
    before = leaves(rb)
    td = torch.ones(4)
    if rank == 1:
        td[2] = float("nan")
    try:
        rb.update_priorities(s.keys, td)
        err = None
    except ValueError as e:
        err = str(e)
    return {"err": err, "unchanged": leaves(rb) == before}


def _nothing_body(rank, ws):
    rb = make(rank, ws)
    out = []
    for fn in (lambda: rb.sample(4), lambda: rb.update_priorities([0], [1.0])):
        try:
            fn()
            out.append(None)
        except ValueError as e:
            out.append(str(e))
    rb.add(rows(2, rank, 0), valid=torch.zeros(2, dtype=torch.bool))
    try:
        rb.sample(4)
        out.append(None)
    except ValueError as e:
        out.append(str(e))
    return out


def test_bad_input_raises_on_the_calling_rank_and_changes_no_shard():
    res = run_distributed(_bad_body, 2)
    e0, e1 = res[0]["errors"], res[1]["errors"]
    assert e1[0].startswith("ValueError: batch_size: expected an int in [1, ")
    assert "input refused on rank(s) [1]" in e0[0]
    assert all("expected the same batch_size and dst on every rank" in e[1] for e in (e0, e1))
    assert e0[2].startswith("ValueError: dst: expected an int in [0, 1], got 2") and "rank(s) [0]" in e1[2]
    assert e1[3].startswith("ValueError: beta:") and "rank(s) [1]" in e0[3]
    assert e0[4].startswith("TypeError: keys: expected dtype torch.int64") and "rank(s) [0]" in e1[4]
    assert e1[5].startswith("ValueError: td_errors: expected shape [4]") and "rank(s) [1]" in e0[5]
    assert e1[6].startswith("ValueError: keys, td_errors: expected both or neither") and "rank(s) [1]" in e0[6]
    assert res[0]["unchanged"] and res[1]["unchanged"]
    assert res[0]["after"] != res[1]["after"]


def test_strict_nan_on_one_rank_refuses_everywhere():
    res = run_distributed(_strict_body, 2)
    assert res[1]["err"].startswith("td_errors: expected finite TD errors (strict=True)")
    assert "input refused on rank(s) [1]" in res[0]["err"]
    assert res[0]["unchanged"] and res[1]["unchanged"]


def test_empty_or_all_invalid_union_raises_on_every_rank():
    res = run_distributed(_nothing_body, 2)
    for out in res:
        assert out[0].startswith("sample: expected a buffer with rows, got an empty one (every shard is empty)")
        assert out[1] is None  # a key never handed out: dropped on its owner, not an error
        assert out[2].startswith("sample: expected rows with a priority above 0")


def _config_body(rank, ws):
    from gpu_replay.distributed import ShardedPrioritizedReplayBuffer
    try:
        ShardedPrioritizedReplayBuffer(C, SPEC, seed=SEED, alpha=0.5 if rank == 1 else 0.6)
    except ValueError as e:
        a = str(e)
    try:
        ShardedPrioritizedReplayBuffer(0 if rank == 0 else C, SPEC)
    except ValueError as e:
        b = str(e)
    ok = ShardedPrioritizedReplayBuffer(C + rank, SPEC, fanout=2 ** (rank + 2))  # capacities, fanouts may differ
    return a, b, ok.capacity


def test_construction_checks_every_rank_agrees():
    res = run_distributed(_config_body, 2)
    assert all("settings that differ from rank 0's on rank(s) [1]" in r[0] for r in res)
    assert res[0][1].startswith("capacity: expected an int in [1, ") and "refused on rank(s) [0]" in res[1][1]
    assert [r[2] for r in res] == [C, C + 1]


# ----------------------------------------------------------------------------- checkpoints
def _ckpt_body(rank, ws, folder):
    rb = make(rank, ws)
    fill(rb, rank, ws)
    path = os.path.join(folder, "shard-{rank}-of-{world_size}.ckpt")
    rb.save(path)
    state = (leaves(rb), rb.tree.state.maxes.tolist(), rb.tree.counter.read())
    want = [rb.sample(8, beta=0.5).keys.tolist() for _ in range(2)]
    rb.update_priorities(torch.tensor(want[0]), torch.full((8,), 50.0))
    rb.add(rows(3, rank, 100))
    # a fresh sharded buffer (a restarted job) loads the files and resumes exactly
    rb2 = make(rank, ws)
    rb2.load(path)
    again = [rb2.sample(8, beta=0.5).keys.tolist() for _ in range(2)]
    rb.load(path)  # the used one rolls back too (its keys shift past those it handed out)
    restored = (leaves(rb), rb.tree.state.maxes.tolist())
    return {"want": want, "again": again, "state": state,
            "state2": (leaves(rb2), rb2.tree.state.maxes.tolist(), rb2.tree.counter.read()),
            "restored": restored}


def _refuse_body(rank, ws, folder, case):
    rb = make(rank, ws)
    fill(rb, rank, ws, td_seed=5)
    before = (leaves(rb), rb.tree.counter.read(), rb.generator.get_state().tolist())
    if case == "swap":  # rank 0 reads rank 1's file
        path = os.path.join(folder, f"shard-{1 - rank if rank < 2 else rank}-of-{ws}.ckpt")
    elif case == "mixed":  # rank 1 reads a file of another save
        path = os.path.join(folder, "other-{rank}.ckpt" if rank == 1 else "shard-{rank}-of-{world_size}.ckpt")
    else:  # files of a 2-process run in a 4-process group
        path = os.path.join(folder, "shard-{rank}-of-2.ckpt")
    try:
        rb.load(path)
        err = None
    except ValueError as e:
        err = str(e)
    after = (leaves(rb), rb.tree.counter.read(), rb.generator.get_state().tolist())
    return {"err": err, "unchanged": after == before}


def _other_save_body(rank, ws, folder):
    rb = make(rank, ws)
    fill(rb, rank, ws)
    rb.sample(4)
    rb.save(os.path.join(folder, "other-{rank}.ckpt"))


def test_checkpoint_round_trip_and_refusals(tmp_path):
    folder = str(tmp_path)
    res = run_distributed(_ckpt_body, 2, folder)
    for r in res:
        assert r["again"] == r["want"], "a loaded buffer draws what the saved one drew next"
        assert r["state2"][0] == r["state"][0] and r["state2"][1] == r["state"][1] and r["state2"][2] == r["state"][2]
        assert r["restored"] == (r["state"][0], r["state"][1])
    assert sorted(os.listdir(folder)) == ["shard-0-of-2.ckpt", "shard-1-of-2.ckpt"]
    run_distributed(_other_save_body, 2, folder)
    res = run_distributed(_refuse_body, 2, folder, "swap")
    assert res[0]["err"].startswith("load.rank: expected 0 (this rank's file), got 1 (another rank's file)")
    assert res[1]["err"].startswith("load.rank: expected 1 (this rank's file), got 0")
    res2 = run_distributed(_refuse_body, 2, folder, "mixed")
    assert all("files from different saves" in r["err"] for r in res2)
    res4 = run_distributed(_refuse_body, 4, folder, "world")
    assert res4[0]["err"].startswith("load.world_size: expected 4 (this group's), got 2 "
                                     "(a file from another world size)")
    assert res4[2]["err"].startswith("checkpoint ") and "cannot read it" in res4[2]["err"]
    for r in res + res2 + res4:
        assert r["unchanged"]


# ----------------------------------------------------------------------------- the rest
def _empty_rank_body(rank, ws):
    rb = make(rank, ws)
    fill(rb, rank, ws)  # rank 2 holds nothing
    s = rb.sample(16, beta=0.4)
    rb.update_priorities(s.keys, torch.full((16,), 0.5))  # rank 2 updates others' rows
    after = rb.sample(16, beta=0.4, dst=2)
    return {"len": len(rb), "glen": rb.global_len(), "keys": s.keys.tolist(),
            "after": None if after is None else after.keys.tolist(), "check": rb.check()}


def test_a_rank_with_no_rows_samples_and_updates():
    res = run_distributed(_empty_rank_body, 4)
    assert res[2]["len"] == 0 and {r["glen"] for r in res} == {sum(min(n, C) for n in FILLS[4])}
    assert len(res[2]["keys"]) == 16 and not any(k % 4 == 2 for r in res for k in r["keys"])
    assert len(res[2]["after"]) == 16 and [r["after"] for r in (res[0], res[1], res[3])] == [None] * 3
    assert all(r["check"] == 0.0 for r in res)


def _nstep_body(rank, ws):
    from gpu_replay.distributed import ShardedPrioritizedReplayBuffer
    rb = ShardedPrioritizedReplayBuffer(C, {"obs": ((2,), torch.float32), "action": ((), torch.int64)}, n_step=2,
                                        gamma=0.5, num_envs=1 + rank)
    E = 1 + rank
    keys = []
    for t in range(3):
        k = rb.step(torch.full((E, 2), float(t)), torch.zeros(E, dtype=torch.int64), torch.ones(E),
                    torch.full((E, 2), float(t + 1)), torch.zeros(E, dtype=torch.bool),
                    torch.zeros(E, dtype=torch.bool))
        keys.append(None if k is None else k.tolist())
    s = rb.sample(4, dst=0)
    return {"keys": keys, "reward": None if s is None else s["reward"].tolist()}


def test_nstep_rows_through_step_get_global_keys():
    res = run_distributed(_nstep_body, 2)
    assert res[0]["keys"] == [None, [0], [2]] and res[1]["keys"] == [None, [1, 3], [5, 7]]
    assert res[0]["reward"] == [1.5] * 4  # 1 + 0.5 * 1


def test_example_script_runs():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
    try:
        import distributed_per
    finally:
        sys.path.pop(0)
    import torch._dynamo  # noqa: F401 - DDP imports it: once here, not in every forked rank (~2 s each)
    res = run_distributed(distributed_per.run, 2, 30)
    assert [r["rows"] for r in res] == [res[0]["rows"]] * 2 and res[0]["rows"] > 0
    assert all(r["sampled"] == 30 * 32 for r in res)


def test_needs_an_initialized_group():
    from gpu_replay.distributed import ShardedPrioritizedReplayBuffer
    assert not dist.is_initialized()
    with pytest.raises(ValueError, match="expected an initialized torch.distributed process group"):
        ShardedPrioritizedReplayBuffer(C, SPEC)


def _spawn_body(rank, ws):
    rb = make(rank, ws, backend="torch")  # (the shards' pure-torch backend, for once)
    fill(rb, rank, ws)
    s = rb.sample(8, beta=0.4)
    rb.update_priorities(s.keys, torch.ones(8))
    return {"keys": s.keys.tolist(), "rows": rb.global_len()}


def test_spawned_processes_work_too():
    """torch.multiprocessing.spawn's way (fresh interpreters, as torchrun gives): ~10 s here,
    as each rank imports torch and the compilers again; the same buffer."""
    res = run_distributed(_spawn_body, 2, start_method="spawn", timeout_s=120)
    assert [r["rows"] for r in res] == [sum(min(n, C) for n in FILLS[2])] * 2
    assert all(len(r["keys"]) == 8 for r in res)


def _threads_body(rank, ws):
    import threading
    rb = make(rank, ws)
    fill(rb, rank, ws)
    stop = threading.Event()
    added = []

    def actor():  # this rank's actors keep adding while the learner samples and updates
        i = 0
        while not stop.is_set() and i < 400:
            first = rb.local.sampler.counter.added()  # (the only thread adding: the next local key)
            added.append(rb.add(rows(2, rank, first)).tolist())
            i += 1

    t = threading.Thread(target=actor)
    t.start()
    bad = 0
    for _ in range(30):
        s = rb.sample(8, beta=0.4)
        bad += sum(1 for k, o in zip(s.keys.tolist(), s["obs"].tolist()) if o != [float(k % ws), float(k // ws)])
        rb.update_priorities(s.keys, torch.rand(8))
    stop.set()
    t.join()
    return {"bad": bad, "check": rb.check(), "added": len(added),
            "keys_ok": all(k % ws == rank for ks in added for k in ks)}


def test_actor_threads_add_while_the_learner_samples():
    """Rows added by another thread during collective calls: every sampled row is its key's
    row, the trees stay exact, and added keys belong to their rank."""
    res = run_distributed(_threads_body, 2)
    for r in res:
        assert r["bad"] == 0 and r["check"] == 0.0 and r["keys_ok"] and r["added"] > 0

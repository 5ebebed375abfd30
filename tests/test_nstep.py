"""NStep against an independent per-episode reference: random streams (all autoreset modes,
terminations, truncations, both at once, flushes), checkpoints, bad input, and (on CUDA) the
absence of host syncs. Real gymnasium vector envs: test_nstep_gym.py."""
import doctest
import io

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import gpu_replay.nstep as nstep_mod
from gpu_replay.nstep import NStep

MODES = ("next_step", "same_step", "disabled")


# --------------------------------------------------------------------------- reference
def reference(records, n, gamma):
    """Plain per-episode n-step transitions. ``records[e]`` is env e's list of
    ("step", dict) and ("cut",) entries in time order; a step dict has key, obs, action, aux,
    r, next_obs (the true one), term, trunc, real. Episodes end at a real step with term or
    trunc, and at a cut (a flush: the episode is unfinished there). Returns {key: row}."""
    out = {}
    for env_records in records:
        episodes, cur = [], []
        for rec in env_records:
            if rec[0] == "cut":
                if cur:
                    episodes.append(cur)
                cur = []
                continue
            s = rec[1]
            if not s["real"]:
                continue
            cur.append(s)
            if s["term"] or s["trunc"]:
                episodes.append(cur)
                cur = []
        if cur:
            episodes.append(cur)
        for ep in episodes:
            for i, s in enumerate(ep):
                k = min(n, len(ep) - i)
                ret = 0.0
                for j in range(k):
                    ret += gamma ** j * float(ep[i + j]["r"])
                last = ep[i + k - 1]
                assert s["key"] not in out
                out[s["key"]] = dict(obs=s["obs"], action=s["action"], aux=s["aux"], reward=ret,
                                     next_obs=last["next_obs"], discount=gamma ** k,
                                     terminated=bool(last["term"]), ends_truncated=bool(last["trunc"]))
    return out


def make_stream(seed, E, T, mode, p_term=0.1, p_trunc=0.05, p_both=0.03, flush_at=()):
    """Synthetic vector-env stream. Returns (calls, records): calls is a list of step kwargs
    (numpy arrays, as a gymnasium vector env gives them) or "flush"."""
    rng = np.random.default_rng(seed)
    calls, records = [], [[] for _ in range(E)]
    pending_reset = np.zeros(E, dtype=bool)  # next-step autoreset: this call is a reset step
    for t in range(T):
        if t in flush_at:
            calls.append("flush")
            for e in range(E):
                records[e].append(("cut",))
        keys = t * E + np.arange(E)
        obs = np.stack([keys, np.zeros(E)], 1).astype(np.float32)
        true_next = np.stack([keys, np.ones(E)], 1).astype(np.float32)
        action = keys.astype(np.int64)
        aux = rng.normal(size=(E, 2)).astype(np.float32)
        reward = (rng.normal(size=E) * 10).astype(np.float32)
        u = rng.random(E)
        term = u < p_term
        trunc = (u >= p_term) & (u < p_term + p_trunc)
        both = rng.random(E) < p_both
        term, trunc = term | both, trunc | both
        real = np.ones(E, dtype=bool)
        if mode == "next_step":
            real = ~pending_reset
            term, trunc = term & real, trunc & real  # a reset step ends nothing
            pending_reset = term | trunc
        kw = dict(obs=obs, action=action, reward=reward, terminated=term, truncated=trunc,
                  aux_action=aux)
        done = term | trunc
        if mode == "same_step":
            # the vector env returns the new episode's first obs; the true one is in info
            passed = np.where(done[:, None], np.stack([keys, np.full(E, 2)], 1), true_next)
            kw["next_obs"] = passed.astype(np.float32)
            final = np.full(E, None, dtype=object)
            for e in np.flatnonzero(done):
                final[e] = true_next[e]
            kw["info"] = {"final_obs": final, "_final_obs": done.copy()} if done.any() else {}
        else:
            kw["next_obs"] = true_next
        calls.append(kw)
        for e in range(E):
            records[e].append(("step", dict(key=int(keys[e]), obs=obs[e], action=int(action[e]),
                                            aux=aux[e], r=reward[e], next_obs=true_next[e],
                                            term=bool(term[e]), trunc=bool(trunc[e]),
                                            real=bool(real[e]))))
    return calls, records


def run(ns, calls):
    """Feed the calls; check the fixed output shapes; return all rows (numpy) + valid."""
    E, n = ns.num_envs, ns.n
    outs, since = [], 0
    for c in calls:
        if c == "flush":
            out = ns.flush()
            pend = min(since, n - 1)
            if pend == 0:
                assert out is None
            else:
                assert out[1].shape == (E * pend,)
            since = 0
        else:
            out = ns.step(**c)
            since += 1
            if since < n:
                assert out is None, f"call {since} of n={n} should return None"
            else:
                assert out[1].shape == (E,) and out[1].dtype == torch.bool
                assert all(v.shape[0] == E for v in out[0].values())
        if out is not None:
            outs.append(out)
    out = ns.flush()
    if out is not None:
        assert out[1].shape == (E * min(since, n - 1),)
        outs.append(out)
    assert ns.flush() is None  # nothing left
    if not outs:
        return None, np.zeros(0, dtype=bool)
    rows = {k: torch.cat([o[0][k] for o in outs]).cpu().numpy() for k in outs[0][0]}
    valid = torch.cat([o[1] for o in outs]).cpu().numpy()
    return rows, valid


def check(rows, valid, ref, key_of, expect_all_valid, what=""):
    if rows is None:
        assert not ref
        return
    assert rows["reward"].dtype == np.float32 and rows["discount"].dtype == np.float32
    assert rows["terminated"].dtype == np.bool_
    keys = key_of(rows)
    vkeys = keys[valid]
    assert len(set(vkeys.tolist())) == len(vkeys), f"{what}: a transition was emitted twice"
    missing = set(ref) - set(vkeys.tolist())
    extra = set(vkeys.tolist()) - set(ref)
    assert not missing, f"{what}: transitions never emitted: {sorted(missing)[:10]}"
    assert not extra, f"{what}: valid rows that are not transitions (e.g. reset steps): {sorted(extra)[:10]}"
    # an invalid row is never a real transition
    assert not set(keys[~valid].tolist()) & set(ref), f"{what}: a real transition came out invalid"
    if expect_all_valid:
        assert valid.all(), f"{what}: invalid rows where every step is a transition"
    idx = np.flatnonzero(valid)
    want = [ref[k] for k in vkeys.tolist()]
    np.testing.assert_array_equal(rows["obs"][idx], np.stack([w["obs"] for w in want]), err_msg=what)
    np.testing.assert_array_equal(rows["next_obs"][idx], np.stack([w["next_obs"] for w in want]),
                                  err_msg=what)
    np.testing.assert_array_equal(rows["action"][idx], np.array([w["action"] for w in want]), err_msg=what)
    np.testing.assert_array_equal(rows["aux_action"][idx], np.stack([w["aux"] for w in want]), err_msg=what)
    np.testing.assert_array_equal(rows["terminated"][idx], np.array([w["terminated"] for w in want]),
                                  err_msg=what)
    np.testing.assert_allclose(rows["reward"][idx], np.array([w["reward"] for w in want]),
                               rtol=1e-5, atol=1e-5, err_msg=what)
    # gamma**k rounded to float32 (the output dtype), e.g. a subnormal gamma**k becomes 0
    np.testing.assert_allclose(rows["discount"][idx],
                               np.array([w["discount"] for w in want]).astype(np.float32),
                               rtol=1e-6, atol=0, err_msg=what)


def synthetic_key(rows):
    return rows["obs"][:, 0].astype(np.int64)


def check_stream(E, n, gamma, mode, T, seed, flush_at=(), **probs):
    calls, records = make_stream(seed, E, T, mode, flush_at=flush_at, **probs)
    ns = NStep(E, n, gamma, autoreset_mode=mode)
    rows, valid = run(ns, calls)
    ref = reference(records, n, gamma)
    check(rows, valid, ref, synthetic_key, expect_all_valid=(mode != "next_step"),
          what=f"E={E} n={n} gamma={gamma} mode={mode} seed={seed}")
    return ref


# --------------------------------------------------------------------------- random streams
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.99, 1.0])
def test_random_streams_match_reference(n, gamma, mode):
    ref = check_stream(E=3, n=n, gamma=gamma, mode=mode, T=50, seed=n * 100 + int(gamma * 10))
    assert len(ref) > 0


@pytest.mark.parametrize("mode", MODES)
def test_flush_mid_stream_and_long_episodes(mode):
    # flushes cut episodes (shorter k, terminated False); rare ends -> many full-n windows
    check_stream(E=4, n=5, gamma=0.9, mode=mode, T=80, seed=7, flush_at=(3, 4, 30, 61),
                 p_term=0.03, p_trunc=0.03, p_both=0.01)


@pytest.mark.parametrize("mode", MODES)
def test_every_step_ends_an_episode(mode):
    # p_both=1: every real step is terminated and truncated at once: k=1, termination wins
    ref = check_stream(E=2, n=4, gamma=0.7, mode=mode, T=12, seed=3, p_term=0, p_trunc=0, p_both=1)
    assert all(r["terminated"] and r["discount"] == 0.7 for r in ref.values())


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(E=st.integers(1, 4), n=st.sampled_from([1, 2, 3, 5, 8]),
       gamma=st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0)),
       mode=st.sampled_from(MODES), T=st.integers(0, 40), seed=st.integers(0, 2 ** 31),
       p_term=st.sampled_from([0.0, 0.1, 0.4]), p_trunc=st.sampled_from([0.0, 0.1, 0.4]),
       flush_at=st.sets(st.integers(0, 30), max_size=3))
def test_property_random_streams(E, n, gamma, mode, T, seed, p_term, p_trunc, flush_at):
    check_stream(E=E, n=n, gamma=gamma, mode=mode, T=T, seed=seed, flush_at=flush_at,
                 p_term=p_term, p_trunc=p_trunc, p_both=0.05)


@pytest.mark.parametrize("mode", MODES)
def test_n1_is_exactly_one_step(mode):
    gamma = 0.9
    calls, records = make_stream(11, 3, 30, mode, p_term=0.2, p_trunc=0.2)
    ns = NStep(3, 1, gamma, autoreset_mode=mode)
    for c, t in zip(calls, range(len(calls))):
        rows, valid = ns.step(**c)
        steps = [records[e][t][1] for e in range(3)]
        assert valid.tolist() == [s["real"] for s in steps]
        assert torch.equal(rows["reward"], torch.from_numpy(c["reward"]))  # bit-exact
        assert torch.equal(rows["discount"], torch.full((3,), gamma, dtype=torch.float32))
        assert torch.equal(rows["next_obs"], torch.from_numpy(np.stack([s["next_obs"] for s in steps])))
        assert torch.equal(rows["obs"], torch.from_numpy(c["obs"]))
        assert rows["terminated"].tolist() == c["terminated"].tolist()
    assert ns.flush() is None


def test_reward_precision_float64_accumulation():
    # rewards of very different magnitudes: float32 accumulation would lose the small ones
    E, n, gamma = 2, 8, 0.999
    ns = NStep(E, n, gamma, autoreset_mode="disabled")
    rng = np.random.default_rng(0)
    rs = [(rng.normal(size=E) * 10.0 ** rng.integers(-3, 6, size=E)).astype(np.float64) for _ in range(n)]
    z = np.zeros((E, 1), np.float32)
    f = np.zeros(E, bool)
    for r in rs:
        out = ns.step(z, np.zeros(E, np.int64), r, z, f, f)
    want = sum(gamma ** j * rs[j] for j in range(n))
    np.testing.assert_allclose(out[0]["reward"].numpy(), want.astype(np.float32), rtol=1e-6)


def test_doctest():
    res = doctest.testmod(nstep_mod, optionflags=doctest.ELLIPSIS)
    assert res.attempted > 0 and res.failed == 0


# --------------------------------------------------------------------------- extras, buffer, checkpoints
def test_extra_fields_ride_along_and_feed_a_buffer():
    from gpu_replay import PrioritizedReplayBuffer
    E, n = 4, 3
    ns = NStep(E, n, 0.99, autoreset_mode="disabled")
    rng = np.random.default_rng(1)
    aux_in, outs = [], []
    for t in range(6):
        aux = torch.from_numpy(rng.normal(size=(E, 2)).astype(np.float32))
        aux_in.append(aux)
        out = ns.step(torch.randn(E, 8), torch.randint(0, 5, (E,)), torch.randn(E), torch.randn(E, 8),
                      torch.zeros(E, dtype=torch.bool), torch.zeros(E, dtype=torch.bool), aux_action=aux)
        if out is not None:
            outs.append(out)
            assert torch.equal(out[0]["aux_action"], aux_in[t - (n - 1)])
            assert out[0]["aux_action"].dtype == torch.float32 and out[0]["aux_action"].shape == (E, 2)
    # an extra that requires grad (a policy's continuous action) is detached, not tracked
    aux = torch.zeros(E, 2, requires_grad=True)
    out = ns.step(torch.randn(E, 8), torch.randint(0, 5, (E,)), torch.randn(E), torch.randn(E, 8),
                  torch.zeros(E, dtype=torch.bool), torch.zeros(E, dtype=torch.bool), aux_action=aux * 2)
    outs.append(out)
    assert not any(v.requires_grad for v in out[0].values())
    assert not ns.state_dict()["field.aux_action"].requires_grad
    spec = ns.buffer_spec()
    assert spec["aux_action"] == ((2,), torch.float32) and spec["discount"] == ((), torch.float32)
    rb = PrioritizedReplayBuffer(64, spec, backend="torch")
    for rows, valid in outs:
        rb.add(rows, valid)
    rows, valid = ns.flush()
    rb.add(rows, valid)
    assert len(rb) == 7 * E
    # a buffer spec given up front is accepted (and checked) as NStep's spec
    ns2 = NStep(E, n, 0.99, spec=spec)
    assert ns2.spec == {k: spec[k] for k in ("obs", "action", "aux_action")}


@pytest.mark.parametrize("mode", MODES)
def test_state_dict_roundtrip(mode):
    E, n, gamma = 3, 4, 0.9
    calls, _ = make_stream(5, E, 40, mode, p_term=0.15, p_trunc=0.1)
    a = NStep(E, n, gamma, autoreset_mode=mode)
    for c in calls[:17]:
        a.step(**c)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf)
    assert all(isinstance(v, (int, torch.Tensor)) for v in sd.values())
    b = NStep(E, n, gamma, autoreset_mode=mode)
    b.load_state_dict(sd)
    for c in calls[17:]:
        oa, ob = a.step(**c), b.step(**c)
        for k in oa[0]:
            assert torch.equal(oa[0][k], ob[0][k]), k
        assert torch.equal(oa[1], ob[1])
    fa, fb = a.flush(), b.flush()
    for k in fa[0]:
        assert torch.equal(fa[0][k], fb[0][k]), k
    # mismatched config is refused and changes nothing
    c = NStep(E, n + 1, gamma, autoreset_mode=mode)
    with pytest.raises(ValueError, match="n"):
        c.load_state_dict(sd)
    assert c.spec is None


def test_reset_drops_everything():
    ns = NStep(2, 3, 0.9)
    f = np.zeros(2, bool)
    ns.step(np.zeros((2, 1)), np.zeros(2, np.int64), np.ones(2), np.zeros((2, 1)), np.ones(2, bool), f)
    ns.reset()
    assert ns.flush() is None
    # after reset the next call is a real step again (the autoreset flag was dropped)
    for _ in range(3):
        out = ns.step(np.zeros((2, 1)), np.zeros(2, np.int64), np.ones(2), np.zeros((2, 1)), f, f)
    assert out[1].all()


# --------------------------------------------------------------------------- bad input
def sd_equal(a, b):
    if a.keys() != b.keys():
        return False
    for k in a:
        if isinstance(a[k], torch.Tensor):
            if not (a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k])):
                return False
        elif a[k] != b[k]:
            return False
    return True


E0 = 4


def good(**over):
    kw = dict(obs=np.ones((E0, 3), np.float32), action=np.arange(E0, dtype=np.int64),
              reward=np.ones(E0, np.float32), next_obs=np.ones((E0, 3), np.float32),
              terminated=np.array([True, False, False, False]), truncated=np.zeros(E0, bool),
              aux_action=np.zeros((E0, 2), np.float32))
    kw.update(over)
    return {k: v for k, v in kw.items() if v is not _DROP}


_DROP = object()


def primed(mode="next_step"):
    ns = NStep(E0, 3, 0.9, autoreset_mode=mode)
    kw = good()
    if mode == "same_step":
        kw["info"] = {"final_obs": np.array([np.ones(3, np.float32), None, None, None], dtype=object),
                      "_final_obs": np.array([True, False, False, False])}
    ns.step(**kw)
    kw["terminated"] = np.zeros(E0, bool)
    kw.pop("info", None)
    if mode == "same_step":
        kw["info"] = {}
    ns.step(**kw)
    return ns


BAD_STEP = [
    ("wrong num_envs", dict(obs=np.ones((3, 3), np.float32)), ValueError, "obs"),
    ("obs shape", dict(obs=np.ones((E0, 4), np.float32)), ValueError, "obs"),
    ("next_obs shape", dict(next_obs=np.ones((E0, 3, 1), np.float32)), ValueError, "next_obs"),
    ("obs unsafe dtype", dict(obs=np.ones((E0, 3), np.complex64)), TypeError, "obs"),
    ("action unsafe dtype", dict(action=np.zeros(E0, np.float32)), TypeError, "action"),
    ("action num_envs", dict(action=np.zeros(E0 + 1, np.int64)), ValueError, "action"),
    ("reward shape", dict(reward=np.ones((E0, 1), np.float32)), ValueError, "reward"),
    ("reward dtype", dict(reward=np.ones(E0, np.complex64)), TypeError, "reward"),
    ("terminated not bool", dict(terminated=np.zeros(E0, np.int64)), TypeError, "terminated"),
    ("terminated float", dict(terminated=np.zeros(E0, np.float32)), TypeError, "terminated"),
    ("truncated shape", dict(truncated=np.zeros((E0, 1), bool)), ValueError, "truncated"),
    ("truncated num_envs", dict(truncated=np.zeros(E0 - 1, bool)), ValueError, "truncated"),
    ("not an array", dict(reward=[1.0] * E0), TypeError, "reward"),
    ("object array", dict(obs=np.array([None] * E0, dtype=object)), TypeError, "obs"),
    ("missing extra", dict(aux_action=_DROP), ValueError, "aux_action"),
    ("unknown extra", dict(other=np.zeros(E0, np.float32)), ValueError, "other"),
    ("extra shape", dict(aux_action=np.zeros((E0, 3), np.float32)), ValueError, "aux_action"),
    ("extra dtype", dict(aux_action=np.zeros((E0, 2), np.float64) * 1j), TypeError, "aux_action"),
    ("reserved extra", dict(discount=np.zeros(E0, np.float32)), ValueError, "discount"),
    ("final_obs outside same_step", dict(final_obs=np.ones((E0, 3), np.float32)), TypeError, "final_obs"),
]


@pytest.mark.parametrize("case", BAD_STEP, ids=[c[0] for c in BAD_STEP])
def test_bad_step_input_leaves_windows_unchanged(case):
    _, over, exc, name = case
    ns = primed()
    before = ns.state_dict()
    with pytest.raises(exc, match=name) as ei:
        ns.step(**good(**over))
    msg = str(ei.value)
    assert "expected" in msg or "reserved" in msg or "only used" in msg, msg
    assert sd_equal(before, ns.state_dict())
    # the object still works and gives what it would have without the rejected call
    ref = primed()
    oa, ob = ns.step(**good()), ref.step(**good())
    for k in oa[0]:
        assert torch.equal(oa[0][k], ob[0][k])


BAD_SAME_STEP = [
    ("no info", dict(), TypeError, "info"),
    ("done env without final_obs", dict(info={}), ValueError, "final_obs"),
    ("final_obs wrong shape", dict(final_obs=np.ones((E0, 2), np.float32)), ValueError, "final_obs"),
    ("final_obs entry wrong shape",
     dict(info={"final_obs": np.array([np.ones(2, np.float32), None, None, None], dtype=object),
                "_final_obs": np.array([True, False, False, False])}), ValueError, r"final_obs\[0\]"),
    ("final_obs_mask wrong dtype", dict(final_obs=np.ones((E0, 3), np.float32),
                                         final_obs_mask=np.ones(E0, np.int64)), ValueError, "final_obs_mask"),
    ("info not a mapping", dict(info=[1, 2]), TypeError, "info"),
]


@pytest.mark.parametrize("case", BAD_SAME_STEP, ids=[c[0] for c in BAD_SAME_STEP])
def test_bad_same_step_input_leaves_windows_unchanged(case):
    _, over, exc, name = case
    ns = primed("same_step")
    before = ns.state_dict()
    with pytest.raises(exc, match=name):
        ns.step(**good(**over))  # env 0 is terminated in good()
    assert sd_equal(before, ns.state_dict())


def test_bad_first_call_does_not_fix_the_spec():
    ns = NStep(E0, 3, 0.9)
    before = ns.state_dict()
    with pytest.raises(TypeError, match="terminated"):
        ns.step(**good(terminated=np.zeros(E0, np.int8)))
    assert ns.spec is None and sd_equal(before, ns.state_dict())
    with pytest.raises(ValueError, match="num_envs=4"):
        ns.step(**good(aux_action=np.zeros((2, 2), np.float32)))
    assert ns.spec is None
    ns.step(**good(obs=np.ones((E0, 5), np.float64), next_obs=np.ones((E0, 5), np.float64)))
    assert ns.spec["obs"] == ((5,), torch.float64)


@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(num_envs=0, n=3, gamma=0.9), ValueError, "num_envs"),
    (dict(num_envs=2.0, n=3, gamma=0.9), TypeError, "num_envs"),
    (dict(num_envs=2, n=0, gamma=0.9), ValueError, "n"),
    (dict(num_envs=2, n=-1, gamma=0.9), ValueError, "n"),
    (dict(num_envs=2, n=2.5, gamma=0.9), TypeError, "n"),
    (dict(num_envs=2, n=3, gamma=-0.1), ValueError, "gamma"),
    (dict(num_envs=2, n=3, gamma=1.5), ValueError, "gamma"),
    (dict(num_envs=2, n=3, gamma=float("nan")), ValueError, "gamma"),
    (dict(num_envs=2, n=3, gamma="0.9"), TypeError, "gamma"),
    (dict(num_envs=2, n=3, gamma=0.9, autoreset_mode="sometimes"), ValueError, "autoreset_mode"),
    (dict(num_envs=2, n=3, gamma=0.9, spec={"obs": ((3,), torch.float32)}), ValueError, "action"),
    (dict(num_envs=2, n=3, gamma=0.9, spec={"obs": ((3,), torch.float32), "action": ((), torch.int64),
                                            "truncated": ((), torch.bool)}), ValueError, "truncated"),
    (dict(num_envs=2, n=3, gamma=0.9, spec={"obs": ((3,), torch.float32), "action": ((), torch.int64),
                                            "next_obs": ((4,), torch.float32)}), ValueError, "next_obs"),
    (dict(num_envs=2, n=3, gamma=0.9, spec={"obs": ((3,), torch.float32), "action": ((), torch.int64),
                                            "reward": ((), torch.int64)}), ValueError, "reward"),
])
def test_bad_constructor_args(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        NStep(**kwargs)


def test_spec_fixes_fields_up_front():
    spec = {"obs": ((4, 4), torch.uint8), "action": ((), torch.int64), "aux_action": ((2,), torch.float32)}
    ns = NStep(2, 2, 0.9, spec=spec, autoreset_mode="disabled")
    before = ns.state_dict()
    f = np.zeros(2, bool)
    with pytest.raises(TypeError, match="obs"):  # float into uint8 does not cast safely
        ns.step(np.zeros((2, 4, 4), np.float32), np.zeros(2, np.int64), np.zeros(2), np.zeros((2, 4, 4), np.uint8),
                f, f, aux_action=np.zeros((2, 2), np.float32))
    assert sd_equal(before, ns.state_dict())
    # safe casts are accepted: bool obs -> uint8, int32 action -> int64, float64 reward
    ns.step(np.zeros((2, 4, 4), bool), np.zeros(2, np.int32), np.zeros(2), np.zeros((2, 4, 4), np.uint8),
            f, f, aux_action=np.zeros((2, 2), np.float32))
    rows, _ = ns.step(np.zeros((2, 4, 4), np.uint8), np.zeros(2, np.int64), np.zeros(2, np.float32),
                      np.zeros((2, 4, 4), np.uint8), f, f, aux_action=np.zeros((2, 2), np.float32))
    assert rows["obs"].dtype == torch.uint8 and rows["action"].dtype == torch.int64


# --------------------------------------------------------------------------- CUDA: no host sync
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", MODES)
def test_no_host_sync_on_cuda(mode):
    E, n = 64, 3
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    ns = NStep(E, n, 0.99, device=dev, autoreset_mode=mode)
    inputs = []
    for _ in range(12):
        term = torch.rand(E, device=dev, generator=g) < 0.1
        trunc = torch.rand(E, device=dev, generator=g) < 0.05
        kw = dict(obs=torch.randn(E, 8, device=dev, generator=g),
                  action=torch.randint(0, 4, (E,), device=dev, generator=g),
                  reward=torch.randn(E, device=dev, generator=g),
                  next_obs=torch.randn(E, 8, device=dev, generator=g),
                  terminated=term, truncated=trunc,
                  aux_action=torch.randn(E, 2, device=dev, generator=g))
        if mode == "same_step":
            kw["final_obs"] = torch.randn(E, 8, device=dev, generator=g)
        inputs.append(kw)
    np_kw = {k: v.cpu().numpy() for k, v in inputs[0].items()}  # host inputs: copied, no sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        outs = [ns.step(**kw) for kw in inputs]
        outs.append(ns.step(**np_kw))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert outs[0] is None and outs[1] is None
    assert all(o[1].shape == (E,) and o[1].device.type == "cuda" for o in outs[2:])

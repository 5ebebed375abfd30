"""Model-based fuzzing of the public API against an obviously-correct Python model of PER.

Random adds (with validity masks), samples, updates with stale, future, negative and
duplicate keys, keys of rows stored invalid, NaN/inf/negative and huge finite TD errors,
clear(), save/load round trips into a fresh buffer, and loads that roll the buffer back to an
older file (keys shifted so that none is reused); after every step the stored rows, the
priorities, the counters and the tree invariants must match the model.
"""
import copy
import math
import tempfile
from pathlib import Path

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from conftest import TRITON_DEVICE
from gpu_replay import PrioritizedReplayBuffer, kernels
from gpu_replay.kernels._math import P_MAX, P_MIN, raw_bounds

EPS = 1e-3
TD = st.one_of(st.floats(-1e6, 1e6, allow_nan=False, width=32), st.sampled_from([float("nan"), float("inf"),
                                                                                  -float("inf"), 0.0, -0.0]))
HUGE_TD = st.one_of(TD, st.floats(-1e300, 1e300, allow_nan=False, allow_infinity=False),
                    st.sampled_from([1e308, -1.7e308, 1e-300, 5e-324]))


class Model:
    """Prioritized replay, the slow and plain way."""

    def __init__(self, capacity, alpha):
        self.capacity, self.alpha = capacity, alpha
        self.rows = {}  # slot -> (key, value)
        self.prio = {}  # slot -> p
        self.added = 0
        self.floor = 0  # keys below it are dead (cleared, or rolled back)
        self.max_raw = 1.0
        self.max_p = 1.0
        self.sanitized = 0
        self.dropped = 0

    def priority(self, raw):
        lo, hi = raw_bounds(self.alpha)
        x = min(max(raw, lo), hi)
        return x, min(max(x ** self.alpha, P_MIN), P_MAX)

    def add(self, values, valid):
        keys = list(range(self.added, self.added + len(values)))
        for k, v, ok in zip(keys, values, valid):
            self.rows[k % self.capacity] = (k, v)
            self.prio[k % self.capacity] = self.max_p if ok else 0.0
        self.added += len(values)
        return keys

    def live(self, k):
        return max(self.added - self.capacity, self.floor) <= k < self.added

    def update(self, keys, tds):
        new_raw, new_p = self.max_raw, self.max_p
        before = dict(self.prio)
        for k, d in zip(keys, tds):
            if not self.live(k) or before[k % self.capacity] == 0.0:
                self.dropped += 1  # stale, never handed out, or a row stored invalid
                continue
            raw = abs(d) + EPS
            bad = not math.isfinite(raw)
            if bad:
                raw = self.max_raw
                self.sanitized += 1
            raw, p = self.priority(raw)
            self.prio[k % self.capacity] = p  # the last write of a duplicate wins
            if not bad:
                new_raw, new_p = max(new_raw, raw), max(new_p, p)
        self.max_raw, self.max_p = new_raw, new_p

    def clear(self):
        C = self.capacity
        self.added = self.floor = -(-self.added // C) * C  # the next key: a multiple of C
        self.rows, self.prio = {}, {}
        self.max_raw = self.max_p = 1.0
        self.sanitized = self.dropped = 0

    def loaded(self, saved):
        """``saved`` loaded into this buffer: its keys shifted by a multiple of the capacity when
        this buffer has handed out keys the file's live window would give again."""
        out = copy.deepcopy(saved)
        start = max(saved.added - self.capacity, saved.floor)
        shift = 0 if self.added == 0 or self.added <= start else -(-(self.added - start) // self.capacity) * self.capacity
        out.added += shift
        out.floor += shift
        out.rows = {slot: (k + shift, v) for slot, (k, v) in out.rows.items()}
        return out


class PERMachine(RuleBasedStateMachine):
    backend = "numba"
    device = "cpu"
    alpha = 0.5
    td = TD

    @initialize(capacity=st.integers(1, 19), fanout=st.sampled_from([2, 4, 8]))
    def setup(self, capacity, fanout):
        self.rb = self.make(capacity, fanout)
        self.model = Model(capacity, self.alpha)
        self.counter = 0
        self.dir = Path(tempfile.mkdtemp())
        self.saved = []  # (path, model) of earlier saves

    def make(self, capacity, fanout):
        return PrioritizedReplayBuffer(capacity, {"v": ((), torch.int64), "x": ((2,), torch.float32)},
                                       device=self.device, backend=self.backend, fanout=fanout, alpha=self.alpha,
                                       eps=EPS, generator=torch.Generator(device=self.device).manual_seed(0))

    @rule(n=st.integers(1, 25), data=st.data())
    def add(self, n, data):
        valid = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
        values = list(range(self.counter, self.counter + n))
        self.counter += n
        keys = self.rb.add({"v": torch.tensor(values), "x": torch.tensor(values, dtype=torch.float32)[:, None]
                            .repeat(1, 2)}, valid=torch.tensor(valid))
        assert keys.tolist() == self.model.add(values, valid)

    @precondition(lambda self: self.model.added > 0)
    @rule(data=st.data())
    def update(self, data):
        m = self.model
        lo, hi = min(m.added - m.capacity, m.floor) - 3, m.added + 3
        keys = data.draw(st.lists(st.integers(min(lo, -2), hi), min_size=1, max_size=12))
        if len(keys) > 2 and data.draw(st.booleans()):
            keys[-1] = keys[0]  # a duplicate, last one wins
        tds = data.draw(st.lists(self.td, min_size=len(keys), max_size=len(keys)))
        t = torch.tensor(tds, dtype=torch.float64)
        self.rb.update_priorities(torch.tensor(keys), t)
        m.update(keys, t.tolist())

    @precondition(lambda self: any(p > 0 for p in self.model.prio.values()))
    @rule(B=st.integers(1, 40), beta=st.floats(0.0, 1.0))
    def sample(self, B, beta):
        s = self.rb.sample(B, beta=beta)
        keys, w = s.keys.cpu().tolist(), s.weights.cpu().tolist()
        pmin = min(p for p in self.model.prio.values() if p > 0)
        for k, v, wi in zip(keys, s["v"].cpu().tolist(), w):
            slot = k % self.model.capacity
            assert self.model.rows[slot] == (k, v), "a sampled row is not the row of its key"
            p = self.model.prio[slot]
            assert p > 0, "sampled a zero-priority row"
            assert self.model.live(k), "sampled a dead key"
            assert math.isclose(wi, (p / pmin) ** -beta, rel_tol=1e-5, abs_tol=1e-37), (wi, p, pmin, beta)

    @rule()
    def clear(self):
        self.rb.clear()
        self.model.clear()

    @rule()
    def save_and_load(self):
        path = self.dir / f"ckpt{len(self.saved)}"
        self.rb.save(path)
        self.saved.append((path, copy.deepcopy(self.model)))
        fresh = self.make(self.model.capacity, self.rb.tree.fanout)
        fresh.load(path)  # a fresh buffer: nothing to protect, the keys as saved
        self.rb = fresh

    @precondition(lambda self: self.saved)
    @rule(data=st.data())
    def roll_back(self, data):
        path, saved = self.saved[data.draw(st.integers(0, len(self.saved) - 1))]
        self.rb.load(path)  # into this buffer: keys it handed out since must not come back
        self.model = self.model.loaded(saved)

    @invariant()
    def matches_model(self):
        if not hasattr(self, "rb"):
            return
        rb, m = self.rb, self.model
        assert rb.sampler.counter.read() == (m.added, m.floor)
        assert len(rb) == min(m.added - m.floor, m.capacity)
        leaves = rb.tree.leaves.cpu().tolist()
        v = rb.storage.data["v"].cpu().tolist()
        for slot in range(m.capacity):
            if slot in m.rows:
                assert v[slot] == m.rows[slot][1]
                assert math.isclose(leaves[slot], m.prio[slot], rel_tol=1e-12), (slot, leaves[slot], m.prio[slot])
            else:
                assert leaves[slot] == 0.0
        st_ = rb.stats()
        assert st_["sanitized"] == m.sanitized and st_["stale_dropped"] == m.dropped
        assert math.isclose(st_["max_raw_priority"], m.max_raw, rel_tol=1e-12)
        assert math.isclose(st_["max_priority"], m.max_p, rel_tol=1e-12)
        assert rb.tree.check() == 0.0


SETTINGS = settings(max_examples=40, stateful_step_count=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

TestNumba = pytest.mark.skipif(not kernels.available("numba"), reason="numba not installed")(
    SETTINGS(type("NumbaMachine", (PERMachine,), {"backend": "numba"})).TestCase)
TestTorch = SETTINGS(type("TorchMachine", (PERMachine,), {"backend": "torch"})).TestCase
TestHugeTD = SETTINGS(type("HugeTDMachine", (PERMachine,), {"backend": "torch", "alpha": 2.0, "td": HUGE_TD})).TestCase
TestTriton = pytest.mark.skipif(not kernels.available("triton"), reason="triton not installed")(
    settings(SETTINGS, max_examples=8)(type("TritonMachine", (PERMachine,),
                                            {"backend": "triton", "device": TRITON_DEVICE})).TestCase)

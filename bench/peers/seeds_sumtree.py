"""The seeds' SumTree (shared/seeds/004, "Day 13: Prioritized Experience Replay"), as a user
would wire it into a buffer.

Faithful to the tutorial's algorithm:
  * a float64 numpy heap of 2*capacity-1 nodes, leaves at capacity-1 ..;
  * add() writes the slot and calls update(); update() walks to the root in a Python loop,
    adding the delta to each ancestor (float64 deltas, as written: drift is part of the peer);
  * get(s) descends with the tutorial's `if s <= self.tree[left]` test (which can run into
    a zero-priority leaf; kept as is);
  * one Python call per item: sample draws `random.uniform(0, total())` per item and calls
    get(); update and add loop per item.
Around it, the usual user code: priority (|delta| + eps) ** alpha, new items at the running
max priority, IS weights (N * P(i)) ** -beta normalised by their max.

Deviations, none of them on a timed path's algorithm:
  * data live in one numpy array per field instead of the tutorial's `dtype=object` array of
    tuples (an object per transition would not fit at capacity 1e7+); sample() gathers the
    fields with one fancy index per field after the per-item descents;
  * fill(n) builds the heap level by level in numpy (same values, up to float rounding, as n
    calls to add(); fill is not measured, and n Python adds at 1e7 would take minutes).
"""
from __future__ import annotations

import random

import numpy as np

from ._core import ALPHA, fill_chunks, make_rows, spec


class SumTree:
    """The tutorial's class, unchanged except that `data` is not stored here (see module doc)."""

    def __init__(self, capacity):
        self.capacity = capacity
        self.tree = np.zeros(2 * capacity - 1)
        self.write = 0

    def add(self, priority):
        idx = self.write + self.capacity - 1
        self.update(idx, priority)
        self.write = (self.write + 1) % self.capacity

    def update(self, idx, priority):
        change = priority - self.tree[idx]
        self.tree[idx] = priority
        while idx != 0:
            idx = (idx - 1) // 2
            self.tree[idx] += change

    def get(self, s):
        idx = 0
        while True:
            left = 2 * idx + 1
            right = left + 1
            if left >= len(self.tree):
                break

            if s <= self.tree[left]:
                idx = left
            else:
                s -= self.tree[left]
                idx = right

        data_idx = idx - self.capacity + 1
        return idx, self.tree[idx], data_idx

    def total(self):
        return self.tree[0]


def build_heap(tree: np.ndarray, capacity: int) -> None:
    """Fill the internal nodes of a heap whose leaves (tree[capacity-1:]) are set.

    Node i has children 2i+1, 2i+2; nodes of depth d are [2^d - 1, 2^(d+1) - 1). Deepest
    depth first, each depth one vectorised add: the same sums add() would produce."""
    n_internal = capacity - 1
    if n_internal <= 0:
        return
    depth = int(np.floor(np.log2(n_internal))) if n_internal > 0 else 0
    while (1 << (depth + 1)) - 1 < n_internal:
        depth += 1
    for d in range(depth, -1, -1):
        a = (1 << d) - 1
        b = min((1 << (d + 1)) - 1, n_internal)
        if a >= b:
            continue
        tree[a:b] = tree[2 * a + 1 : 2 * b : 2] + tree[2 * a + 2 : 2 * b + 1 : 2]


class SeedsSumTreeBuffer:
    version = "seeds/004 (tutorial)"
    notes = "Python loop per item over a float64 numpy heap; data as numpy columns"

    def __init__(self, capacity: int, spec_kind: str = "vec8", eps: float = 0.01,
                 alpha: float = ALPHA):
        self.capacity = int(capacity)
        self.spec_kind = spec_kind
        self.fields = spec(spec_kind)
        self.tree = SumTree(self.capacity)
        self.data = {k: np.zeros((self.capacity, *s), dtype=d) for k, (s, d) in self.fields.items()}
        self.eps = eps
        self.alpha = alpha
        self.max_p = 1.0  # running max of stored priorities (already ** alpha)
        self.n_entries = 0
        self._rows = None

    # --- harness interface -------------------------------------------------------------
    def fill(self, n: int) -> None:
        n = int(n)
        cap = self.capacity
        leaves = self.tree.tree[cap - 1 :]
        pos = 0
        for rows, td in fill_chunks(self.spec_kind, n):
            m = len(td)
            idx = (pos + np.arange(m)) % cap
            for k, v in rows.items():
                self.data[k][idx] = v
            leaves[idx] = (td.astype(np.float64) + self.eps) ** self.alpha
            pos += m
        build_heap(self.tree.tree, cap)
        self.tree.write = n % cap
        self.n_entries = min(n, cap)
        self.max_p = float(leaves.max()) if self.n_entries else 1.0

    def prepare_add(self, B: int) -> None:
        self._rows = make_rows(self.spec_kind, B, np.random.default_rng(7))

    def add(self, B: int) -> None:
        if self._rows is None or len(self._rows["obs"]) < B:
            self.prepare_add(B)
        r = self._rows
        obs, act, rew, nobs, done = r["obs"], r["action"], r["reward"], r["next_obs"], r["done"]
        d = self.data
        d_obs, d_act, d_rew, d_nobs, d_done = d["obs"], d["action"], d["reward"], d["next_obs"], d["done"]
        tree = self.tree
        for i in range(B):
            w = tree.write
            d_obs[w] = obs[i]
            d_act[w] = act[i]
            d_rew[w] = rew[i]
            d_nobs[w] = nobs[i]
            d_done[w] = done[i]
            tree.add(self.max_p)
        self.n_entries = min(self.n_entries + B, self.capacity)

    def sample(self, B: int, beta: float):
        tree = self.tree
        total = tree.total()
        idxs = []
        prios = []
        data_idxs = []
        for _ in range(B):
            s = random.uniform(0, total)
            idx, p, data_idx = tree.get(s)
            idxs.append(idx)
            prios.append(p)
            data_idxs.append(data_idx)
        di = np.asarray(data_idxs)
        batch = {k: v[di] for k, v in self.data.items()}
        probs = np.asarray(prios) / total
        weights = np.power(self.n_entries * probs, -beta)
        weights /= weights.max()
        batch["weights"] = weights
        batch["idxs"] = idxs
        return idxs

    def random_keys(self, B: int, rng):
        return [int(i) + self.capacity - 1 for i in rng.integers(0, self.n_entries, B)]  # the tree's leaf indices

    def update(self, idxs, priorities) -> None:
        tree = self.tree
        for idx, err in zip(idxs, priorities):
            p = (abs(float(err)) + self.eps) ** self.alpha
            tree.update(idx, p)
            if p > self.max_p:
                self.max_p = p


def make(capacity: int, spec_kind: str = "vec8", device: str = "cpu") -> SeedsSumTreeBuffer:
    from ._core import PeerUnavailable

    if device != "cpu":
        raise PeerUnavailable("seeds' SumTree is numpy (CPU only)")
    spec(spec_kind)
    return SeedsSumTreeBuffer(capacity, spec_kind)

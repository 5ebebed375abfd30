"""tianshou PrioritizedReplayBuffer (numba segment tree, numpy storage in a Batch).

tianshou's single ReplayBuffer takes one transition per add() (a batch of B parallel steps
needs a VectorReplayBuffer of B sub-buffers, a different buffer), so add(B) is B calls of
add(batch), as a user's collect loop does; the B Batch objects are built beforehand
(untimed, like the other peers' preallocated rows; building them costs ~11 us each more). fill() installs the arrays through
set_batch() and the weights through its segment tree in one vectorised call.
sample() is buffer.sample(B): the Batch of fields plus `weight` (normalised by the max).
update() is update_weight(indices, |delta|): tianshou adds float32 eps and raises to alpha.
"""
from __future__ import annotations

import numpy as np

from ._core import ALPHA, BETA, PeerUnavailable, fill_chunks, make_rows, spec


class TianshouBuffer:
    notes = "tianshou PrioritizedReplayBuffer; add(B) = B single-transition adds"

    def __init__(self, capacity: int, spec_kind: str):
        import tianshou
        from tianshou.data import Batch, PrioritizedReplayBuffer

        self.version = f"tianshou {tianshou.__version__}"
        self.Batch = Batch
        self.capacity = int(capacity)
        self.spec_kind = spec_kind
        self.buf = PrioritizedReplayBuffer(self.capacity, alpha=ALPHA, beta=BETA)
        self._rows = None

    def fill(self, n: int) -> None:
        cap = self.capacity
        n = int(n)
        f = spec(self.spec_kind)
        arrays = {k: np.zeros((cap, *s), dtype=d) for k, (s, d) in f.items()}
        w = np.zeros(cap, dtype=np.float64)
        pos = 0
        for rows, td in fill_chunks(self.spec_kind, n):
            m = len(td)
            idx = (pos + np.arange(m)) % cap
            for k, v in rows.items():
                arrays[k][idx] = v
            w[idx] = td
            pos += m
        done = arrays["done"]
        meta = self.Batch(
            obs=arrays["obs"],
            act=arrays["action"],
            rew=arrays["reward"].astype(np.float64),  # tianshou's add() stores rew as float
            terminated=done,
            truncated=np.zeros(cap, dtype=bool),
            done=done.copy(),
            obs_next=arrays["next_obs"],
        )
        buf = self.buf
        buf.set_batch(meta)
        buf._size = min(n, cap)
        buf._insertion_idx = n % cap
        buf.last_index[0] = (n - 1) % cap
        ind = np.arange(min(n, cap))
        buf.update_weight(ind, w[: len(ind)])

    def prepare_add(self, B: int) -> None:
        # one Batch per transition, built here (untimed) as the other peers' rows are
        r = make_rows(self.spec_kind, B, np.random.default_rng(7))
        self._rows = [
            self.Batch(obs=r["obs"][i], act=r["action"][i], rew=r["reward"][i],
                       terminated=r["done"][i], truncated=False, obs_next=r["next_obs"][i])
            for i in range(B)
        ]

    def add(self, B: int) -> None:
        if self._rows is None or len(self._rows) != B:
            self.prepare_add(B)
        add = self.buf.add
        for b in self._rows:
            add(b)

    def sample(self, B: int, beta: float):
        self.buf._beta = beta
        batch, indices = self.buf.sample(B)
        return indices

    def random_keys(self, B: int, rng):
        return rng.integers(0, len(self.buf), B)

    def update(self, indices, priorities) -> None:
        self.buf.update_weight(indices, priorities)


def make(capacity: int, spec_kind: str = "vec8", device: str = "cpu") -> TianshouBuffer:
    if device != "cpu":
        raise PeerUnavailable("tianshou's buffers are CPU (numpy) only")
    try:
        import tianshou  # noqa: F401
        from tianshou.data import PrioritizedReplayBuffer  # noqa: F401
    except ImportError as e:
        raise PeerUnavailable(f"tianshou not installed ({e}); run bench/setup_peers.sh") from None
    spec(spec_kind)
    return TianshouBuffer(capacity, spec_kind)

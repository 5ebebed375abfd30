"""cpprb PrioritizedReplayBuffer (C++ segment trees, numpy storage).

update() passes |delta|; cpprb adds its eps (1e-4) and raises to alpha itself. sample()
returns a dict with the fields, "weights" (normalised by the max) and "indexes".
"""
from __future__ import annotations

import numpy as np

from ._core import ALPHA, PeerUnavailable, fill_chunks, make_rows, spec


class CpprbBuffer:
    notes = "cpprb.PrioritizedReplayBuffer, add() of a whole batch"

    def __init__(self, capacity: int, spec_kind: str):
        import cpprb

        self.version = f"cpprb {getattr(cpprb, '__version__', None) or _dist_version('cpprb')}"
        self.spec_kind = spec_kind
        env_dict = {}
        for k, (s, d) in spec(spec_kind).items():
            env_dict[k] = {"shape": s if s else 1, "dtype": d}
        self.rb = cpprb.PrioritizedReplayBuffer(int(capacity), env_dict, alpha=ALPHA)
        self._rows = None

    def fill(self, n: int) -> None:
        for rows, td in fill_chunks(self.spec_kind, int(n)):
            self.rb.add(priorities=td, **rows)

    def prepare_add(self, B: int) -> None:
        self._rows = make_rows(self.spec_kind, B, np.random.default_rng(7))

    def add(self, B: int) -> None:
        if self._rows is None or len(self._rows["obs"]) < B:
            self.prepare_add(B)
        r = self._rows
        if len(r["obs"]) != B:
            r = {k: v[:B] for k, v in r.items()}
        self.rb.add(**r)

    def sample(self, B: int, beta: float):
        s = self.rb.sample(B, beta)
        return s["indexes"]

    def random_keys(self, B: int, rng):
        return rng.integers(0, self.rb.get_stored_size(), B)

    def update(self, indexes, priorities) -> None:
        self.rb.update_priorities(indexes, priorities)


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def make(capacity: int, spec_kind: str = "vec8", device: str = "cpu") -> CpprbBuffer:
    if device != "cpu":
        raise PeerUnavailable("cpprb is CPU only")
    try:
        import cpprb  # noqa: F401
    except ImportError as e:
        raise PeerUnavailable(f"cpprb not installed ({e}); run bench/setup_peers.sh") from None
    spec(spec_kind)
    return CpprbBuffer(capacity, spec_kind)

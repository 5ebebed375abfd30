"""gpu_replay itself, behind the same interface as the peers, so that every number in a
table comes from the same timing loop. The name's suffix picks the backend:
``gpu_replay:numba`` / ``gpu_replay:torch`` (CPU), ``gpu_replay:triton`` / ``gpu_replay:torch``
(CUDA). sample() returns the keys, the fields gathered and the IS weights computed (all on
the device); update() takes raw TD errors (|N(0, 1)| here: p = (|d| + eps) ** alpha).
"""
from __future__ import annotations

import numpy as np

from ._core import ALPHA, PeerUnavailable, fill_chunks, make_rows, spec


class GpuReplay:
    def __init__(self, capacity: int, spec_kind: str, device: str, backend: str):
        import torch

        import gpu_replay
        from gpu_replay import PrioritizedReplayBuffer

        self.torch = torch
        self.device = torch.device(device)
        self.version = f"gpu_replay {gpu_replay.__version__} (torch {torch.__version__})"
        torch_spec = {k: (s, torch.from_numpy(np.empty(0, d)).dtype) for k, (s, d) in spec(spec_kind).items()}
        try:
            self.rb = PrioritizedReplayBuffer(int(capacity), torch_spec, device=self.device, alpha=ALPHA,
                                              backend=backend, generator=torch.Generator(device=self.device)
                                              .manual_seed(0))
        except ValueError as e:
            raise PeerUnavailable(str(e)) from None
        self.notes = f"backend {self.rb.backend}, fanout {self.rb.tree.state.fanout}"
        self.spec_kind = spec_kind
        self._rows = None

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def _t(self, rows):
        return {k: self.torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in rows.items()}

    def fill(self, n: int) -> None:
        for rows, td in fill_chunks(self.spec_kind, int(n)):
            keys = self.rb.add(self._t(rows))
            self.rb.update_priorities(keys, self.torch.from_numpy(td).to(self.device))

    def prepare_add(self, B: int) -> None:
        self._rows = self._t(make_rows(self.spec_kind, B, np.random.default_rng(7)))

    def add(self, B: int) -> None:
        if self._rows is None or self._rows["obs"].shape[0] != B:
            self.prepare_add(B)
        self.rb.add(self._rows)

    def prepare_priorities(self, td: np.ndarray):
        return self.torch.from_numpy(td).to(self.device)

    def sample(self, B: int, beta: float):
        return self.rb.sample(B, beta=beta).keys

    def random_keys(self, B: int, rng):
        """Fresh random live keys (the rows stored now)."""
        hi = self.rb.sampler.counter.added()
        return self.torch.from_numpy(rng.integers(hi - len(self.rb), hi, B)).to(self.device)

    def update(self, keys, td) -> None:
        self.rb.update_priorities(keys, td)


def make(capacity: int, spec_kind: str = "vec8", device: str = "cpu", backend: str = "auto"):
    return GpuReplay(capacity, spec_kind, device, backend)

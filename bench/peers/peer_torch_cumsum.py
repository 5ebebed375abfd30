"""torch eager cumsum + searchsorted, the way TD7's LAP buffer samples (Fujimoto et al. 2023,
`buffer.py`): a float32 priority vector; every sample() takes its cumsum, draws uniforms times
the total and searchsorts them. Priorities here follow PER ((|delta| + eps) ** alpha, IS
weights (N P(i)) ** -beta / max) rather than LAP's clamp, so that it does the same work as the
other peers. Storage: one torch tensor per field on `device`, gathered with index_select.
"""
from __future__ import annotations

import numpy as np

from ._core import ALPHA, PeerUnavailable, fill_chunks, make_rows, spec


class TorchCumsumBuffer:
    notes = "priority vector, cumsum every sample, searchsorted uniform draws (TD7 style)"

    def __init__(self, capacity: int, spec_kind: str, device: str = "cpu",
                 alpha: float = ALPHA, eps: float = 1e-6):
        import torch

        self.torch = torch
        self.version = f"torch {torch.__version__}"
        self.device = torch.device(device)
        self.capacity = int(capacity)
        self.spec_kind = spec_kind
        self.alpha = alpha
        self.eps = eps
        self.data = {
            k: torch.zeros((self.capacity, *s), dtype=_tdtype(torch, d), device=self.device)
            for k, (s, d) in spec(spec_kind).items()
        }
        self.priority = torch.zeros(self.capacity, dtype=torch.float32, device=self.device)
        self.max_priority = 1.0
        self.ptr = 0
        self.size = 0
        self._rows = None

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def fill(self, n: int) -> None:
        torch = self.torch
        pos = 0
        for rows, td in fill_chunks(self.spec_kind, int(n)):
            m = len(td)
            idx = torch.from_numpy((pos + np.arange(m)) % self.capacity).to(self.device)
            for k, v in rows.items():
                self.data[k].index_copy_(0, idx, torch.from_numpy(np.ascontiguousarray(v)).to(self.device))
            p = (torch.from_numpy(td).to(self.device) + self.eps) ** self.alpha
            self.priority.index_copy_(0, idx, p)
            pos += m
        self.ptr = int(n) % self.capacity
        self.size = min(int(n), self.capacity)
        self.max_priority = float(self.priority[: self.size].max())

    def prepare_add(self, B: int) -> None:
        if B > self.capacity:
            raise ValueError(f"add({B}) larger than capacity {self.capacity}")
        torch = self.torch
        rows = make_rows(self.spec_kind, B, np.random.default_rng(7))
        self._rows = {k: torch.from_numpy(v).to(self.device) for k, v in rows.items()}
        self._ar = {}

    def add(self, B: int) -> None:
        torch = self.torch
        if self._rows is None or self._rows["obs"].shape[0] < B:
            self.prepare_add(B)
        # ring write as contiguous slices (at most two): much faster than index_copy_ for
        # uint8 frames on CPU
        a = self.ptr
        n1 = min(B, self.capacity - a)
        for k, v in self._rows.items():
            self.data[k][a : a + n1].copy_(v[:n1])
            if n1 < B:
                self.data[k][: B - n1].copy_(v[n1:B])
        self.priority[a : a + n1] = self.max_priority
        if n1 < B:
            self.priority[: B - n1] = self.max_priority
        self.ptr = (self.ptr + B) % self.capacity
        self.size = min(self.size + B, self.capacity)

    def sample(self, B: int, beta: float):
        torch = self.torch
        csum = torch.cumsum(self.priority[: self.size], 0)
        total = csum[-1]
        val = torch.rand(B, device=self.device) * total
        ind = torch.searchsorted(csum, val).clamp_(max=self.size - 1)
        batch = {k: v.index_select(0, ind) for k, v in self.data.items()}
        probs = self.priority.index_select(0, ind) / total
        w = (self.size * probs) ** (-beta)
        batch["weights"] = w / w.max()
        batch["indices"] = ind
        return ind

    def prepare_priorities(self, pr: np.ndarray):
        return self.torch.from_numpy(pr).to(self.device)

    def random_keys(self, B: int, rng):
        return self.torch.from_numpy(rng.integers(0, self.size, B)).to(self.device)

    def update(self, ind, priorities) -> None:
        p = (priorities.abs() + self.eps) ** self.alpha
        self.priority[ind] = p
        # TD7 keeps max_priority as a Python float (one host sync per update, as there)
        self.max_priority = max(self.max_priority, float(p.max()))


def _tdtype(torch, d):
    return {
        np.dtype(np.float32): torch.float32,
        np.dtype(np.int64): torch.int64,
        np.dtype(np.bool_): torch.bool,
        np.dtype(np.uint8): torch.uint8,
    }[np.dtype(d)]


def make(capacity: int, spec_kind: str = "vec8", device: str = "cpu") -> TorchCumsumBuffer:
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise PeerUnavailable(f"torch not installed: {e}") from None
    spec(spec_kind)
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise PeerUnavailable("CUDA not available")
    return TorchCumsumBuffer(capacity, spec_kind, device)

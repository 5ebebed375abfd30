"""TorchRL TensorDictPrioritizedReplayBuffer over a LazyTensorStorage.

Runs wherever `torchrl._torchrl` (the compiled extension holding the sum/min segment trees)
imports. That extension is tied to the torch release it was built against, so the harness
(bench/peers/__init__.py) runs this module in a subprocess under the interpreter that has a
matching torch: $PEERS_TORCHRL_PYTHON, else .venv-peers/bin/python (bench/setup_peers.sh),
else the current interpreter.

sample(B) is rb.sample(B): a TensorDict of the fields plus "index" and "priority_weight"
(the IS weights). update() is rb.update_priority(index, |delta|): TorchRL adds eps (1e-8)
and raises to alpha. add(B) is rb.extend(TensorDict of B rows), which enters them at the
max priority. On CUDA the storage and the sampler's trees live on the device.
"""
from __future__ import annotations

import numpy as np

from ._core import ALPHA, BETA, PeerUnavailable, fill_chunks, make_rows, spec


class TorchRLBuffer:
    notes = "TensorDictPrioritizedReplayBuffer + LazyTensorStorage (C++ segment trees)"

    def __init__(self, capacity: int, spec_kind: str, device: str = "cpu"):
        import tensordict
        import torch
        import torchrl
        from tensordict import TensorDict
        from torchrl.data import LazyTensorStorage, TensorDictPrioritizedReplayBuffer

        self.torch = torch
        self.TensorDict = TensorDict
        self.version = (
            f"torchrl {torchrl.__version__} (tensordict {tensordict.__version__}, "
            f"torch {torch.__version__})"
        )
        self.device = torch.device(device)
        self.capacity = int(capacity)
        self.spec_kind = spec_kind
        kw = {}
        if self.device.type == "cuda":
            kw["sampler_device"] = self.device
        self.rb = TensorDictPrioritizedReplayBuffer(
            alpha=ALPHA,
            beta=BETA,
            priority_key="td_error",
            storage=LazyTensorStorage(self.capacity, device=self.device),
            **kw,
        )
        self._td = None

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def _make_td(self, rows: dict) -> object:
        torch = self.torch
        n = len(rows["obs"])
        return self.TensorDict(
            {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in rows.items()},
            batch_size=[n],
        ).to(self.device)

    def fill(self, n: int) -> None:
        torch = self.torch
        for rows, td in fill_chunks(self.spec_kind, int(n)):
            idx = self.rb.extend(self._make_td(rows))
            self.rb.update_priority(idx, torch.from_numpy(td).to(self.device))

    def prepare_add(self, B: int) -> None:
        self._td = self._make_td(make_rows(self.spec_kind, B, np.random.default_rng(7)))

    def add(self, B: int) -> None:
        if self._td is None or self._td.batch_size[0] != B:
            self.prepare_add(B)
        self.rb.extend(self._td)

    def sample(self, B: int, beta: float):
        self.rb.sampler._beta = beta
        td = self.rb.sample(B)
        return td.get("index")

    def prepare_priorities(self, pr: np.ndarray):
        return self.torch.from_numpy(pr).to(self.device)

    def random_keys(self, B: int, rng):
        return self.torch.from_numpy(rng.integers(0, len(self.rb), B)).to(self.device)

    def update(self, index, priorities) -> None:
        self.rb.update_priority(index, priorities)


def make(capacity: int, spec_kind: str = "vec8", device: str = "cpu") -> TorchRLBuffer:
    try:
        import torch
        import torchrl  # noqa: F401
    except ImportError as e:
        raise PeerUnavailable(f"torchrl not installed ({e}); run bench/setup_peers.sh") from None
    try:
        import torchrl._torchrl  # noqa: F401
    except ImportError as e:
        raise PeerUnavailable(
            f"torchrl's C++ extension does not load with torch {torch.__version__} "
            f"(built for another torch release): {str(e)[:160]}"
        ) from None
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise PeerUnavailable("CUDA not available")
    spec(spec_kind)
    return TorchRLBuffer(capacity, spec_kind, device)

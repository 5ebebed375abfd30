"""An actor thread adding while a learner thread samples and updates: no torn rows, no broken tree."""
import threading

import pytest
import torch

from gpu_replay import PrioritizedReplayBuffer, kernels

BACKENDS = ["torch"] + (["numba"] if kernels.available("numba") else [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_actor_and_learner_threads(backend):
    C, D = 512, 16
    rb = PrioritizedReplayBuffer(C, {"key": ((), torch.int64), "obs": ((D,), torch.float32)}, backend=backend,
                                 fanout=4, generator=torch.Generator().manual_seed(0))
    rb.add({"key": torch.arange(64), "obs": torch.arange(64, dtype=torch.float32)[:, None].repeat(1, D)})
    stop = threading.Event()
    errors = []
    counts = {"adds": 0, "samples": 0}

    def actor():
        try:
            k = 64
            while not stop.is_set() and counts["adds"] < 4000:
                n = 1 + k % 37
                keys = torch.arange(k, k + n)
                got = rb.add({"key": keys, "obs": keys.float()[:, None].repeat(1, D)})
                if not torch.equal(got, keys):
                    errors.append(f"keys {got[:3]} != {keys[:3]}")
                k += n
                counts["adds"] += 1
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    def learner():
        try:
            g = torch.Generator().manual_seed(1)
            while not stop.is_set() and counts["samples"] < 3000:
                s = rb.sample(64, beta=0.5)
                # a row is whole: every field was written by the same add
                if not torch.equal(s["key"], s.keys) or not (s["obs"] == s.keys.float()[:, None]).all():
                    errors.append("torn or mismatched row")
                if not (s.priorities > 0).all() or not torch.isfinite(s.weights).all():
                    errors.append("bad priority or weight")
                td = torch.randn(64, generator=g)
                td[0] = float("nan")
                rb.update_priorities(s.keys, td)
                counts["samples"] += 1
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=actor), threading.Thread(target=learner)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    stop.set()
    assert not errors, errors[:5]
    assert counts["adds"] == 4000 and counts["samples"] == 3000
    assert rb.tree.check() == 0.0
    st = rb.stats()
    assert st["sanitized"] + st["stale_dropped"] > 0
    assert rb.sampler.counter.added() == 64 + sum(1 + k % 37 for k in _keys_of_adds(4000))


def _keys_of_adds(n):
    k = 64
    for _ in range(n):
        yield k
        k += 1 + k % 37

"""The CUDA code path, run on the CPU: no host sync, no host/device mix, no pageable copy, and
a budget of device launches per public call (``_trap.Trap``; Triton under the interpreter).

Budgets (a 5-field transition, after one warm-up call): add <= 3 launches (one staged host ->
device copy, one row scatter, one tree insert), sample <= 3 (draws, descent, gather),
update <= 2 (one staged copy of host keys/TD errors, one update: leaves and every level),
n-step ``step`` + add <= 6.
"""
import numpy as np
import pytest
import torch

from gpu_replay import NStep, PrioritizedReplayBuffer, ReplayBuffer, kernels

pytestmark = pytest.mark.skipif(not kernels.available("triton") or not kernels.triton_runs_on_cpu(),
                                reason="needs triton (interpreter on the CPU)")

from _trap import Trap  # noqa: E402

SPEC = {"obs": ((8,), torch.float32), "action": ((), torch.int64), "reward": ((), torch.float32),
        "next_obs": ((8,), torch.float32), "done": ((), torch.bool)}
BUDGET = {"add": 3, "sample": 3, "update": 2, "step": 6}


def host_rows(n, seed=0):
    g = np.random.default_rng(seed)
    return {"obs": g.standard_normal((n, 8), dtype=np.float32), "action": g.integers(0, 4, n),
            "reward": g.standard_normal(n).astype(np.float64),  # float64, as gymnasium gives: cast on the host
            "next_obs": g.standard_normal((n, 8), dtype=np.float32), "done": g.random(n) < 0.1}


def device_rows(trap, n, seed=0):
    rows = {k: torch.from_numpy(np.ascontiguousarray(v)).to(SPEC[k][1]) for k, v in host_rows(n, seed).items()}
    trap.mark_device(rows)
    return rows


def check(trap, what, fn, *args, budget=None, **kwargs):
    trap.reset()
    out = trap.call(fn, *args, **kwargs)
    assert not trap.events, f"{what}: {trap.report()}"
    if budget is not None:
        assert trap.n_launches() <= budget, f"{what}: {trap.n_launches()} launches > {budget}: {dict(trap.launches)}"
    return out


@pytest.mark.parametrize("normalize", ["global", "batch"])
def test_prioritized_buffer_calls(normalize):
    rb = PrioritizedReplayBuffer(1000, SPEC, backend="triton", normalize=normalize,
                                 generator=torch.Generator().manual_seed(0))
    keys = rb.add(host_rows(64))  # warm-up of every call
    s = rb.sample(32)
    rb.update_priorities(s.keys, torch.rand(32))
    rb.update_priorities(s.keys.numpy(), np.random.rand(32).astype(np.float32))
    with Trap(rb) as trap:
        check(trap, "add (host rows)", rb.add, host_rows(16, 1), budget=BUDGET["add"])
        check(trap, "add (device rows)", rb.add, device_rows(trap, 16, 2), budget=BUDGET["add"] - 1)
        valid = torch.rand(16) > 0.3
        trap.mark_device(valid)
        check(trap, "add (a validity mask)", rb.add, device_rows(trap, 16, 3), valid=valid, budget=BUDGET["add"] - 1)
        s = check(trap, "sample", rb.sample, 32, beta=0.4,
                  budget=BUDGET["sample"] + (normalize == "batch"))  # the batch max: one launch more
        td = torch.rand(32)
        trap.mark_device(td)
        check(trap, "update (device keys, TD errors)", rb.update_priorities, s.keys, td * 2, budget=BUDGET["update"] - 1)
        check(trap, "update (host keys, TD errors)", rb.update_priorities, s.keys.numpy().copy(),
              np.random.rand(32).astype(np.float32), budget=BUDGET["update"])
        check(trap, "update (a list)", rb.update_priorities, [1, 2, 3], [0.5, 0.1, 2.0], budget=BUDGET["update"])
        beta = torch.tensor(0.7, dtype=torch.float64)
        trap.mark_device(beta)
        check(trap, "sample (beta on the device)", rb.sample, 32, beta=beta, budget=4)
    assert rb.tree.check() == 0.0


def test_uniform_buffer_calls():
    rb = ReplayBuffer(1000, SPEC, backend="triton", generator=torch.Generator().manual_seed(0))
    rb.add(host_rows(64))
    rb.sample(32)
    with Trap(rb) as trap:
        check(trap, "add (host rows)", rb.add, host_rows(16, 1), budget=BUDGET["add"])
        check(trap, "add (device rows)", rb.add, device_rows(trap, 16, 2), budget=BUDGET["add"] - 1)
        b = check(trap, "sample", rb.sample, 32, budget=2)  # draws + one gather that also draws the slots
    assert b["obs"].shape == (32, 8)


@pytest.mark.parametrize("cls", [ReplayBuffer, PrioritizedReplayBuffer])
@pytest.mark.parametrize("mode", ["next_step", "same_step"])
def test_nstep_step_and_flush(cls, mode):
    E = 4
    spec = {"obs": ((8,), torch.float32), "action": ((), torch.int64)}
    rb = cls(1000, spec, backend="triton", n_step=3, gamma=0.9, num_envs=E, autoreset_mode=mode)
    g = np.random.default_rng(0)

    def inputs():
        obs = g.standard_normal((E, 8), dtype=np.float32)
        kw = dict(obs=obs, action=g.integers(0, 4, E), reward=g.standard_normal(E),
                  next_obs=obs + 1, terminated=g.random(E) < 0.2, truncated=g.random(E) < 0.1)
        if mode == "same_step":
            done = kw["terminated"] | kw["truncated"]
            fin = np.empty(E, dtype=object)
            for e in range(E):
                fin[e] = obs[e] + 5 if done[e] else None
            kw["info"] = {"final_obs": fin, "_final_obs": done}
        return kw

    for _ in range(4):  # warm-up: the windows fill, then rows flow
        rb.step(**inputs())
    with Trap(rb) as trap:
        for _ in range(3):
            check(trap, "step", rb.step, budget=BUDGET["step"], **inputs())
        check(trap, "flush", rb.flush)
        check(trap, "sample", rb.sample, 16)
    assert len(rb) > 0


def test_standalone_nstep_step():
    ns = NStep(4, 3, 0.9, spec={"obs": ((8,), torch.float32), "action": ((), torch.int64)}, backend="triton")
    g = np.random.default_rng(1)

    def inputs():
        obs = g.standard_normal((4, 8), dtype=np.float32)
        return dict(obs=obs, action=g.integers(0, 4, 4), reward=g.standard_normal(4), next_obs=obs + 1,
                    terminated=g.random(4) < 0.2, truncated=g.random(4) < 0.1)

    for _ in range(4):
        ns.step(**inputs())
    with Trap(ns) as trap:
        out = check(trap, "NStep.step", ns.step, budget=3, **inputs())  # one copy, record, emit
    assert out[0]["obs"].shape == (4, 8)


def test_compat_adapters():
    from gpu_replay.compat import PrioritizedReplayMemory
    m = PrioritizedReplayMemory(500, 6, device="cpu", backend="triton", generator=torch.Generator().manual_seed(0))
    for t in range(40):
        m.push(np.full(6, t, np.float32), t % 3, 0.5, np.full(6, t + 1, np.float32), t % 9 == 0)
    out = m.sample(8)
    m.update_priorities(out[-1], np.random.rand(8))
    with Trap(m.buffer) as trap:
        check(trap, "push", m.push, np.zeros(6, np.float32), 1, 0.5, np.ones(6, np.float32), False, budget=4)
        out = check(trap, "sample", m.sample, 8, budget=5)
        check(trap, "update_priorities", m.update_priorities, out[-1].numpy().copy(), np.random.rand(8), budget=2)


def test_the_trap_catches_a_planted_sync(monkeypatch):
    """The trap is real: a ``.item()`` planted in the update path is reported."""
    from gpu_replay import sumtree
    rb = PrioritizedReplayBuffer(100, SPEC, backend="triton")
    rb.add(host_rows(10))
    s = rb.sample(4)
    orig = sumtree.SumTree._update

    def planted(self, keys, td, strict=False):
        float(self.state.sums[0])  # reads the device: a sync
        return orig(self, keys, td, strict)
    monkeypatch.setattr(sumtree.SumTree, "_update", planted)
    with Trap(rb) as trap:
        trap.call(rb.update_priorities, s.keys, torch.ones(4))
    assert any(kind == "sync" for kind, _, _ in trap.events), trap.report()


def test_the_budget_catches_an_extra_launch(monkeypatch):
    """The launch count is real: one more device op in ``sample`` breaks the budget."""
    from gpu_replay import storage
    rb = PrioritizedReplayBuffer(100, SPEC, backend="triton")
    rb.add(host_rows(10))
    rb.sample(4)
    orig = storage.Storage.gather

    def planted(self, slots):
        out = orig(self, slots)
        out["obs"] = out["obs"] * 1.0  # one more kernel
        return out
    monkeypatch.setattr(storage.Storage, "gather", planted)
    with Trap(rb) as trap:
        with pytest.raises(AssertionError, match="launches"):
            check(trap, "sample", rb.sample, 8, budget=BUDGET["sample"])


def test_the_trap_catches_a_pageable_copy_and_a_mix(monkeypatch):
    rb = PrioritizedReplayBuffer(100, SPEC, backend="triton")
    rb.add(host_rows(10))
    with Trap(rb) as trap:
        x = torch.ones(5)
        dev = torch.zeros(5)
        trap.mark_device(dev)
        trap.call(lambda: dev.copy_(x, non_blocking=True))
        assert [k for k, _, _ in trap.events] == ["pageable"], trap.report()
        trap.reset()
        trap.call(lambda: dev + x)
        assert [k for k, _, _ in trap.events] == ["mix"], trap.report()

"""CUDA only (skipped cleanly without a GPU): no host sync, CUDA-graph capture, real Triton."""
import pytest
import torch

from bench.core import capture_graph
from gpu_replay import PrioritizedReplayBuffer, ReplayBuffer

pytestmark = pytest.mark.cuda

SPEC = {"obs": ((8,), torch.float32), "action": ((), torch.int64), "reward": ((), torch.float32),
        "frame": ((4, 21, 21), torch.uint8)}


def make_batch(n, device="cuda"):
    return {"obs": torch.randn(n, 8, device=device), "action": torch.randint(0, 4, (n,), device=device),
            "reward": torch.randn(n, device=device),
            "frame": torch.randint(0, 255, (n, 4, 21, 21), dtype=torch.uint8, device=device)}


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_add_sample_update_make_no_host_sync(backend):
    rb = PrioritizedReplayBuffer(10_000, SPEC, device="cuda", backend=backend)
    b = make_batch(64)
    valid = torch.rand(64, device="cuda") > 0.1
    td = torch.randn(256, device="cuda")
    for _ in range(2):  # warm-up: compiles the kernels, caches constants
        rb.add(b, valid=valid)
        s = rb.sample(256, beta=0.5)
        rb.update_priorities(s.keys, td)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            rb.add(b, valid=valid)
            s = rb.sample(256, beta=0.5)
            w = s.weights * 2  # IS weights stay on the device
            rb.update_priorities(s.keys, td * w)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert s.weights.device.type == "cuda" and s["frame"].device.type == "cuda"
    assert rb.tree.check() == 0.0


def test_uniform_buffer_makes_no_host_sync():
    rb = ReplayBuffer(1000, SPEC, device="cuda")
    b = make_batch(32)
    rb.add(b)
    rb.sample(8)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        rb.add(b)
        rb.sample(64)
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_one_cycle_captures_in_a_cuda_graph_and_replays():
    rb = PrioritizedReplayBuffer(4096, SPEC, device="cuda")  # default generator: graph-safe
    b = make_batch(128)
    td = torch.rand(512, device="cuda")
    rb.add(make_batch(1024))

    def cycle():
        rb.add(b)
        s = rb.sample(512, beta=0.4)
        rb.update_priorities(s.keys, td * s.weights)
        return s

    for _ in range(3):
        cycle()
    torch.cuda.synchronize()
    added0 = rb.sampler.counter.added() + 3 * 128  # (the capture's own warm-up adds 3 times)
    g, s = capture_graph(cycle)
    for _ in range(20):
        g.replay()
    torch.cuda.synchronize()
    # capture itself does not run the work; every replay adds 128 rows on the device
    added = rb.sampler.counter.added()  # the device counter: replays advance it
    assert added == added0 + 20 * 128 and len(rb) == min(added, rb.capacity)
    assert rb.tree.check() == 0.0
    live = (s.keys >= added - rb.capacity) & (s.keys < added)
    assert live.all()
    assert torch.isfinite(s.weights).all() and (s.weights <= 1).all() and (s.weights > 0).all()


def test_cuda_buffer_accepts_cpu_inputs_and_returns_cuda_tensors():
    rb = PrioritizedReplayBuffer(100, SPEC, device="cuda")
    rb.add(make_batch(10, device="cpu"))
    s = rb.sample(5)
    assert all(s[k].device.type == "cuda" for k in SPEC)
    rb.update_priorities(s.keys.cpu(), torch.ones(5))
    assert rb.tree.check() == 0.0


def test_host_inputs_reach_the_device_without_a_sync():
    """Rows from a gymnasium env arrive as numpy arrays: copying them in must not wait."""
    import numpy as np
    rb = PrioritizedReplayBuffer(1000, SPEC, device="cuda")
    host = {k: v.cpu().numpy() for k, v in make_batch(32).items()}
    rb.add(host)
    s = rb.sample(16)
    rb.update_priorities(s.keys.cpu(), np.ones(16, dtype=np.float32))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        rb.add(host, valid=np.ones(32, dtype=bool))
        s = rb.sample(16)
        rb.update_priorities(s.keys, np.ones(16, dtype=np.float32))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert rb.tree.check() == 0.0


@pytest.mark.parametrize("cls", [ReplayBuffer, PrioritizedReplayBuffer])
@pytest.mark.parametrize("num_envs", [1, 4])
def test_nstep_rows_reach_a_cuda_buffer(cls, num_envs):
    """One env's rows keep a stride of n in the windows: the storage must still take them."""
    spec = {"obs": ((3,), torch.float32), "action": ((), torch.int64)}
    rb = cls(256, spec, device="cuda", n_step=3, gamma=0.9, num_envs=num_envs)
    for t in range(20):
        rb.step(torch.randn(num_envs, 3), torch.zeros(num_envs, dtype=torch.int64), torch.ones(num_envs),
                torch.randn(num_envs, 3), torch.tensor([t % 7 == 6] * num_envs), torch.zeros(num_envs, dtype=torch.bool))
    rb.flush()
    assert len(rb) > 0 and rb.sample(8)["obs"].is_cuda


def test_large_update_captures_in_a_cuda_graph():
    """Batches of 2048+ keys find duplicates with a device sort: still no host sync."""
    rb = PrioritizedReplayBuffer(1 << 16, SPEC, device="cuda")
    rb.add(make_batch(1 << 14))
    td = torch.rand(4096, device="cuda")

    def cycle():
        s = rb.sample(4096, beta=0.4)
        rb.update_priorities(s.keys, td)

    g, _ = capture_graph(cycle)
    for _ in range(5):
        g.replay()
    torch.cuda.synchronize()
    assert rb.tree.check() == 0.0


def test_the_triton_path_equals_the_torch_twins_on_the_device():
    spec = {"obs": ((8,), torch.float32), "a": ((), torch.int64)}
    bufs = [PrioritizedReplayBuffer(500, spec, device="cuda", backend=be, fanout=8,
                                    generator=torch.Generator(device="cuda").manual_seed(3)) for be in ("torch", "triton")]
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        n = int(torch.randint(1, 60, (1,), generator=g))
        batch = {"obs": torch.randn(n, 8, generator=g), "a": torch.randint(0, 5, (n,), generator=g)}
        td = torch.randn(64, generator=g).cuda()
        outs = []
        for b in bufs:
            b.add(batch)
            s = b.sample(64, beta=0.6)
            b.update_priorities(s.keys, td)
            outs.append(s)
        assert torch.equal(outs[0].keys, outs[1].keys) and torch.equal(outs[0].weights, outs[1].weights)
        assert torch.equal(outs[0]["obs"], outs[1]["obs"])
    assert torch.equal(bufs[0].tree.state.sums, bufs[1].tree.state.sums)

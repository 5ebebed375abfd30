"""Every Triton kernel and every numba loop against its torch twin, bit for bit, on
random inputs.

On CPU the Triton kernels run through the Triton interpreter (small sizes); on a CUDA
machine they run compiled, and the twin runs on the CPU copy of the same inputs.
"""
import math

import pytest
import torch

from conftest import TRITON_DEVICE, assert_equal
from gpu_replay import kernels as K
from gpu_replay.keys import KeyCounter
from gpu_replay.kernels import _math as M
from gpu_replay.kernels.refresh import rebuild_torch
from gpu_replay.sumtree import TreeState

# (backend, device) pairs compared with the torch twin on this machine
COMPILED = ([("triton", TRITON_DEVICE)] if K.available("triton") else []) + \
    ([("numba", "cpu")] if K.available("numba") else [])


def test_a_compiled_backend_is_tested():
    assert COMPILED, "neither triton nor numba is installed: nothing to compare the twins with"


CASES = [(1, 2), (7, 2), (100, 4), (1000, 8), (4099, 16), (300, 32)]  # (capacity, fanout)


class Tree:
    """A tree state, its backend's scratch and a key counter: what an op takes."""

    def __init__(self, st, backend, counter):
        self.st, self.counter = st, counter
        self.ops = K.backend(backend)
        self.sc = self.ops.prepare(st)

    def __getattr__(self, op):
        fn = getattr(self.ops, op)
        return lambda *a, **k: fn(self.st, self.sc, self.counter, *a, **k)


def random_state(capacity, fanout, seed, zero_frac=0.3, alpha=0.6, eps=1e-6):
    g = torch.Generator().manual_seed(seed)
    st = TreeState(capacity, fanout, alpha, eps, torch.device("cpu"))
    p = torch.exp(torch.rand(capacity, generator=g, dtype=torch.float64) * 20 - 10)
    p[torch.rand(capacity, generator=g) < zero_frac] = 0.0
    p[capacity // 2] = 0.25  # at least one positive leaf
    st.leaves.copy_(p)
    rebuild_torch(st)
    st.maxes.copy_(torch.tensor([3.5, 3.5 ** alpha], dtype=torch.float64))
    return st


def on(src: TreeState, backend: str, device, added: int, floor: int = 0) -> Tree:
    """A copy of ``src`` on ``device`` for ``backend``, with the key counter at (added, floor)."""
    dev = torch.device(device)
    st = TreeState(src.capacity, src.fanout, src.alpha, src.eps, dev)
    for name in ("sums", "mins", "maxes", "counters"):
        getattr(st, name).copy_(getattr(src, name))
    c = KeyCounter(src.capacity, dev)
    c.set(added, floor)
    return Tree(st, backend, c)


def assert_same_state(a: Tree, b: Tree, what):
    for name in ("sums", "mins", "maxes", "counters"):
        assert_equal(getattr(a.st, name), getattr(b.st, name), f"{what}: {name}")
    assert_equal(a.counter.t, b.counter.t, f"{what}: key counter")


if K.available("triton"):
    import triton
    import triton.language as tl

    from gpu_replay.kernels._jit import pow_pos

    @triton.jit
    def _pow_kernel(x_ptr, y_ptr, out_ptr, cst_ptr, n, BLOCK: tl.constexpr):
        i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = i < n
        x = tl.load(x_ptr + i, mask=m, other=1.0)
        y = tl.load(y_ptr + i, mask=m, other=1.0)
        tl.store(out_ptr + i, pow_pos(x, y, cst_ptr), mask=m)


@pytest.mark.skipif(not K.available("triton"), reason="triton is not installed")
def test_pow_pos_kernel_matches_twin_and_math():
    g = torch.Generator().manual_seed(0)
    n = 4096
    x = torch.exp(torch.rand(n, generator=g, dtype=torch.float64) * 120 - 60)
    x[:4] = torch.tensor([1.0, 2.0, 1e-6, 1.4142135623730951], dtype=torch.float64)
    y = torch.rand(n, generator=g, dtype=torch.float64) * 2.5 - 1.5
    want = M.pow_pos_torch(x, y, M.torch_constants("cpu"))
    out = torch.empty(n, dtype=torch.float64, device=TRITON_DEVICE)
    _pow_kernel[(n // 1024,)](x.to(TRITON_DEVICE), y.to(TRITON_DEVICE), out, M.torch_constants(TRITON_DEVICE).all,
                              n, BLOCK=1024, enable_fp_fusion=False)
    assert_equal(out, want, "pow_pos kernel vs twin")
    ref = torch.tensor([math.pow(a, b) for a, b in zip(x.tolist(), y.tolist())], dtype=torch.float64)
    rel = ((want - ref).abs() / ref).max().item()
    assert rel < 1e-13, rel


@pytest.mark.skipif(not K.available("numba"), reason="numba is not installed")
def test_pow_pos_numba_matches_twin():
    from gpu_replay.kernels._jit import pow_pos_nb
    g = torch.Generator().manual_seed(0)
    x = torch.exp(torch.rand(4096, generator=g, dtype=torch.float64) * 120 - 60)
    for yv in (0.6, -0.4, 1.0):
        got = torch.from_numpy(pow_pos_nb(x.numpy(), yv, M.CONSTANTS_NP))
        assert_equal(got, M.pow_pos_torch(x, yv, M.torch_constants("cpu")), f"pow_pos_nb y={yv}")


def test_priority_bounds_keep_everything_finite_and_monotone():
    """p is monotone in |d| up to the clamp, never 0, never above P_MAX, for any alpha."""
    c = M.torch_constants("cpu")
    raw = torch.tensor([1e-300, 1e-30, 1e-6, 1.0, 1e30, 1e180, 1e200, 1e300, 1.7e308], dtype=torch.float64)
    for alpha in (0.0, 0.001, 0.6, 1.0, 2.0, 16.0):
        h = M.hyper_values(alpha, 1e-6)
        p = M.priority_torch(raw, h, c)
        assert torch.isfinite(p).all() and (p >= M.P_MIN).all() and (p <= M.P_MAX).all(), (alpha, p)
        assert (p[1:] >= p[:-1]).all(), f"alpha={alpha}: not monotone: {p.tolist()}"
        inside = (raw >= h[2]) & (raw <= h[3])
        want = raw[inside] ** alpha
        assert torch.allclose(p[inside], want, rtol=1e-12), alpha


def test_torch_cpu_cumsum_is_left_to_right():
    # the twins rely on it: the kernels add children strictly left to right
    g = torch.Generator().manual_seed(1)
    x = torch.exp(torch.randn(2000, 64, generator=g, dtype=torch.float64) * 8)
    acc = x[:, 0].clone()
    c = torch.cumsum(x, 1)
    for k in range(1, 64):
        acc = acc + x[:, k]
        assert torch.equal(acc, c[:, k])


def test_rebuild_equals_incremental_refresh():
    st = random_state(4099, 16, seed=1)
    inc = on(st, "torch", "cpu", 4099)
    inc.ops.refresh(inc.st, inc.sc, torch.arange(4099))  # the ancestors of every leaf, incrementally
    assert_equal(inc.st.sums, st.sums, "sums")
    assert_equal(inc.st.mins, st.mins, "mins")


@pytest.mark.parametrize("backend,device", COMPILED)
@pytest.mark.parametrize("capacity,fanout", CASES)
@pytest.mark.parametrize("normalize", ["global", "batch", None])
def test_sample_kernel_matches_twin(backend, device, capacity, fanout, normalize):
    st = random_state(capacity, fanout, seed=capacity + fanout)
    B = 333
    g = torch.Generator().manual_seed(7)
    r = torch.rand(B, generator=g, dtype=torch.float64)
    r[:3] = torch.tensor([0.0, 1.0 - 2.0 ** -53, 0.5], dtype=torch.float64)
    r[-1] = 1.0 - 2.0 ** -53  # the very top of the mass
    twin = on(st, "torch", "cpu", capacity + 5)
    dev = on(st, backend, device, capacity + 5)
    for beta in (0.4, 1.0, 0.0):
        want = twin.sample(r, beta, normalize)
        got = dev.sample(r.to(device), beta, normalize)
        for name, a, b in zip(("slots", "keys", "priorities", "weights"), got, want):
            if b is None:
                assert a is None
                continue
            assert_equal(a, b, f"{name} beta={beta}")
        assert (want[2] > 0).all(), "a zero-priority slot was sampled"
    if backend == "triton":  # beta read from a device tensor (what a CUDA graph replays)
        got = dev.sample(r.to(device), torch.tensor(0.4, dtype=torch.float64, device=device), normalize)
        want = twin.sample(r, 0.4, normalize)
        if normalize is not None:
            assert_equal(got[3], want[3], "weights, beta as a tensor")


@pytest.mark.parametrize("backend,device", COMPILED)
@pytest.mark.parametrize("capacity,fanout", CASES[2:4])
def test_find_matches_twin(backend, device, capacity, fanout):
    st = random_state(capacity, fanout, seed=11)
    total = float(st.sums[0])
    mass = torch.rand(101, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * total
    mass[0], mass[1], mass[2] = 0.0, total, total * 2  # the edges: at and past the total
    want = on(st, "torch", "cpu", capacity).sample(mass, 0.0, None, True)
    got = on(st, backend, device, capacity).sample(mass.to(device), 0.0, None, True)
    for a, b, name in zip(got[:3], want[:3], ("slots", "keys", "priorities")):
        assert_equal(a, b, name)
    assert (want[2] > 0).all()


def update_inputs(capacity, B, seed):
    g = torch.Generator().manual_seed(seed)
    added_n = capacity * 3 + 11
    keys = torch.randint(added_n - capacity - 20, added_n + 5, (B,), generator=g)  # some stale / future
    keys[:40] = keys[40:80]  # duplicates, both orders
    keys[80:90] = -3  # negative
    keys[5:10] = added_n - 1 - torch.arange(5) % capacity  # live, for the NaN/inf cases below
    td = torch.randn(B, generator=g, dtype=torch.float32) * 3
    td[5] = float("nan")
    td[6] = float("inf")
    td[7] = -float("inf")
    td[8] = -2.5
    td[9] = 0.0
    td[10:13] = torch.tensor([1e30, 3e38, 1e-30])  # huge and tiny finite values
    return keys, td, added_n


@pytest.mark.parametrize("backend,device", COMPILED)
@pytest.mark.parametrize("capacity,fanout,B", [(c, f, 257) for c, f in CASES] + [(4099, 16, 3001)])
@pytest.mark.parametrize("alpha", [0.6, 2.0])
def test_update_kernel_matches_twin(backend, device, capacity, fanout, B, alpha):
    """B = 3001 takes the launchers' large-batch paths (sort dedup, a launch per level)."""
    from gpu_replay.kernels.update import SORT_DEDUP_MIN, SINGLE_MAX
    assert 257 < min(SORT_DEDUP_MIN, SINGLE_MAX) and max(SORT_DEDUP_MIN, SINGLE_MAX) <= 3001
    st = random_state(capacity, fanout, seed=3 * capacity + fanout, alpha=alpha)
    keys, td, added_n = update_inputs(capacity, B, capacity)
    st.leaves[keys[5:13] % capacity] = 0.5  # the NaN/inf/huge cases hit valid rows
    rebuild_torch(st)
    # a floor inside the live window (a clear() not long ago): keys below it are dead
    floor = added_n // capacity * capacity if capacity > 7 else 0
    twin = on(st, "torch", "cpu", added_n, floor)
    twin.update(keys, td)
    dev = on(st, backend, device, added_n, floor)
    dev.update(keys.to(device), td.to(device))
    assert_same_state(dev, twin, "update")
    c = twin.st.counters.tolist()
    assert c[1] > 0 and c[0] > 0
    assert torch.isfinite(twin.st.sums).all() and float(twin.st.sums[0]) > 0


@pytest.mark.skipif(not K.available("numba"), reason="numba is not installed")
@pytest.mark.parametrize("capacity,fanout", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numba_update_fast_path_matches_twin(capacity, fanout, dtype):
    """The CPU's shortcut (metadata checks, keys and TD errors read in place) does what the
    checked path does, bit for bit, and declines what it does not take."""
    st = random_state(capacity, fanout, seed=5 * capacity + fanout)
    keys, td, added_n = update_inputs(capacity, 257, capacity)
    td = td.to(dtype).requires_grad_()  # read in place: a loss's TD errors need no detach
    twin = on(st, "torch", "cpu", added_n)
    twin.update(keys, td.detach())
    nb = on(st, "numba", "cpu", added_n)
    fast = nb.ops.update_fast(nb.st, nb.sc, nb.counter)
    assert fast(keys, td) is True
    assert_same_state(nb, twin, "fast update")
    before = nb.st.sums.clone()
    wide = torch.stack([keys, keys], 1)
    for k, d in [(keys, td[:, None]), (keys.to(torch.int32), td), (keys.tolist(), td), (wide[:, 0], td),
                 (keys, td.to(torch.float16)), (keys[:0], td[:0]), (keys.numpy(), td)]:
        assert fast(k, d) is False
    assert_equal(nb.st.sums, before, "declined calls change nothing")


@pytest.mark.parametrize("backend,device", COMPILED)
def test_update_never_revives_an_invalid_row(backend, device):
    st = random_state(100, 4, seed=4, zero_frac=0.5)
    zero = (st.leaves == 0).nonzero().flatten()
    keys = torch.cat([zero, zero[:3]]) + 200  # live keys of rows with priority 0
    td = torch.ones(keys.shape[0])
    for tree in (on(st, "torch", "cpu", 250), on(st, backend, device, 250)):
        before = tree.st.sums.clone()
        tree.update(keys.to(device if tree.ops.name != "torch" else "cpu"), td.to(device if tree.ops.name != "torch" else "cpu"))
        assert_equal(tree.st.sums, before, "sums")
        assert tree.st.counters.tolist() == [0, keys.shape[0]]


@pytest.mark.parametrize("backend,device", COMPILED)
@pytest.mark.parametrize("capacity,fanout", CASES)
@pytest.mark.parametrize("with_valid", [False, True])
def test_insert_kernel_matches_twin(backend, device, capacity, fanout, with_valid):
    st = random_state(capacity, fanout, seed=5 * capacity + fanout)
    for n in (1, min(capacity, 129), capacity + 7):  # one row, a batch, more than the ring holds
        valid = (torch.arange(n) % 3 != 0) if with_valid else None
        twin = on(st, "torch", "cpu", capacity * 2 - 3)
        kt = twin.insert(n, valid)
        dev = on(st, backend, device, capacity * 2 - 3)
        kd = dev.insert(n, None if valid is None else valid.to(device))
        assert_equal(kd, kt, f"keys n={n}")
        assert_equal(kt, torch.arange(capacity * 2 - 3, capacity * 2 - 3 + n), "keys are the next n")
        assert_same_state(dev, twin, f"insert n={n}")


@pytest.mark.skipif(not K.available("triton"), reason="triton is not installed")
def test_triton_large_insert_takes_the_multi_launch_path():
    from gpu_replay.kernels.refresh import SINGLE_MAX
    st = random_state(3000, 8, seed=9)
    n = SINGLE_MAX + 5
    twin = on(st, "torch", "cpu", 10)
    twin.insert(n, None)
    dev = on(st, "triton", TRITON_DEVICE, 10)
    dev.insert(n, None)
    assert_same_state(dev, twin, "insert")


@pytest.mark.parametrize("backend,device", COMPILED)
def test_buffers_on_both_backends_agree_end_to_end(backend, device):
    """A whole add/sample/update sequence: the compiled and torch buffers stay bit-identical."""
    from gpu_replay import PrioritizedReplayBuffer
    spec = {"obs": ((2,), torch.float32), "a": ((), torch.int64)}
    bufs = [PrioritizedReplayBuffer(50, spec, device=dev, backend=be, fanout=4,
                                    generator=torch.Generator(device=dev).manual_seed(11))
            for dev, be in ((device, "torch"), (device, backend))]
    g = torch.Generator().manual_seed(2)
    for step in range(12):
        n = int(torch.randint(1, 30, (1,), generator=g))
        batch = {"obs": torch.randn(n, 2, generator=g), "a": torch.randint(0, 5, (n,), generator=g)}
        valid = torch.rand(n, generator=g) > 0.2
        td = torch.randn(16, generator=g)
        outs = []
        for b in bufs:
            b.add(batch, valid=valid)
            s = b.sample(16, beta=0.5)
            b.update_priorities(s.keys, td)
            outs.append(s)
        for name in ("keys", "weights", "priorities"):
            assert_equal(getattr(outs[1], name), getattr(outs[0], name), f"step {step} {name}")
        for name in ("sums", "mins", "maxes", "counters"):
            assert_equal(getattr(bufs[1].tree.state, name), getattr(bufs[0].tree.state, name), f"step {step} {name}")

"""Every Triton kernel and every numba loop against its torch twin, bit for bit, on
random inputs.

On CPU the Triton kernels run through the Triton interpreter (small sizes); on a CUDA
machine they run compiled, and the twin runs on the CPU copy of the same inputs.
"""
import copy
import math

import pytest
import torch

from conftest import TRITON_DEVICE, assert_equal
from gpu_replay._tree import TreeState
from gpu_replay import kernels as K

# (backend, device) pairs compared with the torch twin on this machine
COMPILED = ([("triton", TRITON_DEVICE)] if K.HAVE_TRITON else []) + ([("numba", "cpu")] if K.HAVE_NUMBA else [])
OPS = {"triton": K.TRITON_OPS, "numba": K.NUMBA_OPS}


def test_a_compiled_backend_is_tested():
    assert COMPILED, "neither triton nor numba is installed: nothing to compare the twins with"

if K.HAVE_TRITON:
    import triton
    import triton.language as tl
    from gpu_replay.kernels._math import pow_pos

    @triton.jit
    def _pow_kernel(x_ptr, y_ptr, out_ptr, cst_ptr, n, BLOCK: tl.constexpr):
        i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = i < n
        x = tl.load(x_ptr + i, mask=m, other=1.0)
        y = tl.load(y_ptr + i, mask=m, other=1.0)
        tl.store(out_ptr + i, pow_pos(x, y, cst_ptr), mask=m)

CASES = [(1, 2), (7, 2), (100, 4), (1000, 8), (4099, 16), (300, 32)]  # (capacity, fanout)


def random_tree(capacity, fanout, seed, zero_frac=0.3, added=None, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    st = TreeState(capacity, fanout, 0.6, 1e-6, torch.device(device))
    p = torch.exp(torch.rand(capacity, generator=g, dtype=torch.float64) * 20 - 10)
    p[torch.rand(capacity, generator=g) < zero_frac] = 0.0
    p[capacity // 2] = 0.25  # at least one positive leaf
    st.leaves[:capacity] = p.to(device)
    added = capacity if added is None else added
    K.TORCH_OPS["refresh"](st, torch.arange(capacity, device=device))
    st.maxes.copy_(torch.tensor([3.5, 3.5 ** 0.6], dtype=torch.float64))
    st.max_next.copy_(st.maxes)
    return st


def on(st, device):
    out = copy.copy(st)
    for name in ("sums", "mins", "maxes", "max_next", "counters", "hyper", "offsets_t"):
        setattr(out, name, getattr(st, name).clone().to(device))
    out._views()
    return out


def assert_same_state(a, b, what):
    # the last element of sums is the torch backend's write sink: never read
    assert_equal(a.sums[:-1], b.sums[:-1], f"{what}: sums")
    for name in ("mins", "maxes", "counters"):
        assert_equal(getattr(a, name), getattr(b, name), f"{what}: {name}")


@pytest.mark.skipif(not K.HAVE_TRITON, reason="triton is not installed")
def test_pow_pos_kernel_matches_twin_and_math():
    g = torch.Generator().manual_seed(0)
    n = 4096
    x = torch.exp(torch.rand(n, generator=g, dtype=torch.float64) * 120 - 60)
    x[:4] = torch.tensor([1.0, 2.0, 1e-6, 1.4142135623730951], dtype=torch.float64)
    y = torch.rand(n, generator=g, dtype=torch.float64) * 2.5 - 1.5
    want = K.pow_pos_torch(x, y, K.torch_constants("cpu"))
    out = torch.empty(n, dtype=torch.float64, device=TRITON_DEVICE)
    _pow_kernel[(n // 1024,)](x.to(TRITON_DEVICE), y.to(TRITON_DEVICE), out, K.math_constants(TRITON_DEVICE), n,
                              BLOCK=1024, enable_fp_fusion=False)
    assert_equal(out, want, "pow_pos kernel vs twin")
    if K.HAVE_NUMBA:
        from gpu_replay.kernels._math import pow_pos_nb
        got = torch.empty_like(x)
        for yv in (0.6, -0.4, 1.0):
            got = torch.from_numpy(pow_pos_nb(x.numpy(), yv, K.math_constants("cpu").numpy()))
            assert_equal(got, K.pow_pos_torch(x, yv, K.torch_constants("cpu")), f"pow_pos_nb y={yv}")
    ref = torch.tensor([math.pow(a, b) for a, b in zip(x.tolist(), y.tolist())], dtype=torch.float64)
    rel = ((want - ref).abs() / ref).max().item()
    assert rel < 1e-13, rel


def test_torch_cpu_cumsum_is_left_to_right():
    # the twins rely on it: the kernels add children strictly left to right
    g = torch.Generator().manual_seed(1)
    x = torch.exp(torch.randn(2000, 64, generator=g, dtype=torch.float64) * 8)
    acc = x[:, 0].clone()
    c = torch.cumsum(x, 1)
    for k in range(1, 64):
        acc = acc + x[:, k]
        assert torch.equal(acc, c[:, k])


@pytest.mark.parametrize("backend,device", COMPILED)
@pytest.mark.parametrize("capacity,fanout", CASES)
@pytest.mark.parametrize("norm_global", [True, False])
def test_sample_kernel_matches_twin(backend, device, capacity, fanout, norm_global):
    st = random_tree(capacity, fanout, seed=capacity + fanout)
    B = 333
    g = torch.Generator().manual_seed(7)
    r = torch.rand(B, generator=g, dtype=torch.float64)
    r[:3] = torch.tensor([0.0, 1.0 - 2.0 ** -53, 0.5], dtype=torch.float64)
    r[-1] = 1.0 - 2.0 ** -53  # the very top of the mass
    added = torch.tensor(capacity + 5, dtype=torch.int64)
    beta = torch.tensor([0.4], dtype=torch.float64)
    want = K.TORCH_OPS["sample"](st, r, added, beta, norm_global)
    dst = on(st, device)
    got = OPS[backend]["sample"](dst, r.to(device), added.to(device), beta.to(device), norm_global)
    for name, a, b in zip(("slots", "keys", "priorities", "weights"), got, want):
        if b is None:
            assert a is None
            continue
        assert_equal(a, b, name)
    assert (want[2] > 0).all(), "a zero-priority slot was sampled"


@pytest.mark.parametrize("backend,device", COMPILED)
@pytest.mark.parametrize("capacity,fanout,B", [(c, f, 257) for c, f in CASES] + [(4099, 16, 3001)])
def test_update_kernel_matches_twin(backend, device, capacity, fanout, B):
    """B = 3001 takes the launcher's sort-based duplicate search (>= SORT_DEDUP_MIN)."""
    from gpu_replay.kernels.update import SORT_DEDUP_MIN
    assert 257 < SORT_DEDUP_MIN <= 3001  # both paths are covered
    st = random_tree(capacity, fanout, seed=3 * capacity + fanout)
    g = torch.Generator().manual_seed(capacity)
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
    added = torch.tensor(added_n, dtype=torch.int64)
    twin = on(st, "cpu")
    K.TORCH_OPS["update"](twin, keys, td, added, 0.6, 1e-6)
    K.TORCH_OPS["refresh"](twin, keys)
    dst = on(st, device)
    dk, dtd, da = keys.to(device), td.to(device), added.to(device)
    OPS[backend]["update"](dst, dk, dtd, da, 0.6, 1e-6)
    OPS[backend]["refresh"](dst, dk)
    assert_same_state(dst, twin, "update")
    assert twin.counters[1].item() > 0 and twin.counters[0].item() > 0


@pytest.mark.parametrize("backend,device", COMPILED)
@pytest.mark.parametrize("capacity,fanout", CASES)
@pytest.mark.parametrize("with_valid", [False, True])
def test_insert_kernel_matches_twin(backend, device, capacity, fanout, with_valid):
    st = random_tree(capacity, fanout, seed=5 * capacity + fanout)
    n = min(capacity, 129)
    keys = torch.arange(capacity * 2 - 3, capacity * 2 - 3 + n)
    valid = (torch.arange(n) % 3 != 0) if with_valid else None
    twin = on(st, "cpu")
    K.TORCH_OPS["insert"](twin, keys, valid, 0.6)
    K.TORCH_OPS["refresh"](twin, keys)
    dst = on(st, device)
    dk = keys.to(device)
    OPS[backend]["insert"](dst, dk, None if valid is None else valid.to(device), 0.6)
    OPS[backend]["refresh"](dst, dk)
    assert_same_state(dst, twin, "insert")


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
        assert_same_state(bufs[1].tree.state, bufs[0].tree.state, f"step {step}")

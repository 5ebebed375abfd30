"""Frames once (``frame_stack=``): every sampled row's obs and next_obs against a brute-force
reference that keeps every stack as the env gave it; rows whose frames were overwritten never
returned; every autoreset mode, n in {1, 3, 5}, stack in {1, 2, 4}, the three paddings of
gymnasium's FrameStackObservation, several envs, rings that wrap many times, flush,
checkpoints, the host and device code paths, a real gymnasium pixel env, bad input, and the
CUDA path under the Triton interpreter with the sync trap."""
import itertools

import numpy as np
import pytest
import torch

import gpu_replay.frames as frames_mod
from gpu_replay import PrioritizedReplayBuffer, ReplayBuffer, kernels
from gpu_replay.keys import keys_from_slots

MODES = ("next_step", "same_step", "disabled")
FRAME = (3, 4)  # 12 random bytes a frame: two frames are never equal by chance


# --------------------------------------------------------------------------- the env
class VecSim:
    """E envs behind gymnasium's FrameStackObservation in a vector env with the given
    autoreset mode: random frames, random episode ends (terminated, truncated, both)."""

    def __init__(self, E, S, mode, padding, rng, p_term=0.08, p_trunc=0.05):
        self.E, self.S, self.mode, self.padding, self.g = E, S, mode, padding, rng
        self.p_term, self.p_trunc = p_term, p_trunc
        self.custom = rng.integers(0, 256, FRAME, dtype=np.uint8)

    def frame(self):
        return self.g.integers(0, 256, FRAME, dtype=np.uint8)

    def reset_stack(self):
        f0 = self.frame()
        pad = {"reset": f0, "zero": np.zeros_like(f0), "custom": self.custom}[self.padding]
        return np.stack([pad] * (self.S - 1) + [f0])

    def reset(self):
        self.stacks = [self.reset_stack() for _ in range(self.E)]
        self.prev_done = np.zeros(self.E, dtype=bool)
        return np.stack(self.stacks)

    def step(self):
        """(obs, action, reward, next_obs, terminated, truncated, info) of one vector step."""
        E, g = self.E, self.g
        obs = np.stack(self.stacks)
        te, tr = g.random(E) < self.p_term, g.random(E) < self.p_trunc
        reward = g.standard_normal(E)
        nxt, fin = [], np.empty(E, dtype=object)
        for e in range(E):
            if self.mode == "next_step" and self.prev_done[e]:  # the reset step
                st, te[e], tr[e], reward[e] = self.reset_stack(), False, False, 0.0
            else:
                st = np.concatenate([self.stacks[e][1:], self.frame()[None]])
                if self.mode == "same_step" and (te[e] or tr[e]):
                    fin[e], st = st, self.reset_stack()
            nxt.append(st)
        nxt = np.stack(nxt)
        done = te | tr
        self.stacks = [self.reset_stack() if self.mode == "disabled" and done[e] else nxt[e] for e in range(E)]
        self.prev_done = done
        info = {"final_obs": fin, "_final_obs": done.copy()} if self.mode == "same_step" else {}
        return obs, g.integers(0, 5, E), reward, nxt, te, tr, info


class Reference:
    """Brute force: every step's stacks as the env gave them, n-step rows emitted in the
    buffer's order (env order per call; flush: oldest pending first), one key per row."""

    def __init__(self, E, n, mode):
        self.E, self.n, self.mode = E, n, mode
        self.seg = [[] for _ in range(E)]
        self.since = 0
        self.key = 0
        self.rows = {}  # key -> (env, obs, next_obs, valid, terminated, k)
        self.prev_done = np.zeros(E, dtype=bool)

    def step(self, obs, nxt, te, tr, info):
        done = te | tr
        for e in range(self.E):
            true_next = info["final_obs"][e] if self.mode == "same_step" and done[e] else nxt[e]
            reset_step = self.mode == "next_step" and self.prev_done[e]
            self.seg[e].append((obs[e].copy(), true_next.copy(), bool(done[e]), bool(te[e]), reset_step))
        self.prev_done = done
        self.since += 1
        keys = []
        if self.since >= self.n:
            for e in range(self.E):
                keys.append(self._emit(e, len(self.seg[e]) - self.n))
        return keys

    def flush(self):
        P = min(self.since, self.n - 1)
        keys = []
        for i in range(P):
            for e in range(self.E):
                keys.append(self._emit(e, len(self.seg[e]) - P + i))
        self.seg = [[] for _ in range(self.E)]
        self.since = 0
        return keys

    def _emit(self, e, i):
        win = self.seg[e][i:]
        k = next((j + 1 for j, s in enumerate(win) if s[2]), len(win))
        key = self.key
        self.rows[key] = (e, win[0][0], win[k - 1][1], not win[0][4], win[k - 1][3] and win[k - 1][2], k)
        self.key += 1
        return key


def make(cls, mode, n, S, E, capacity, path="host", **kw):
    spec = {"obs": ((S, *FRAME), torch.uint8), "action": ((), torch.int64)}
    old = frames_mod._FORCE_DEVICE_OPS
    frames_mod._FORCE_DEVICE_OPS = path == "device"
    try:
        return cls(capacity, spec, n_step=n, gamma=0.9, num_envs=E, frame_stack=S, autoreset_mode=mode,
                   generator=torch.Generator().manual_seed(1), **kw)
    finally:
        frames_mod._FORCE_DEVICE_OPS = old


def tree_of(rb):
    return rb.tree if isinstance(rb, PrioritizedReplayBuffer) else rb.sampler.mask_tree


def live_rows(rb):
    """{key: slot} of the rows in the ring, and the set of valid keys (priority > 0)."""
    C = rb.capacity
    added, floor = rb.sampler.counter.read()
    slots = torch.arange(C)
    keys = keys_from_slots(slots, torch.tensor(added), C)
    live = (keys >= max(added - C, floor)) & (keys < added)
    leaves = tree_of(rb).leaves
    valid = set(keys[live & (leaves > 0)].tolist())
    return {int(k): int(s) for k, s in zip(keys[live].tolist(), slots[live].tolist())}, valid


def check_against(rb, ref, no_loss=False):
    """Every valid row bit-identical to the reference; valid rows are real transitions; the
    rows lost to overwritten frames are, per env, older than every valid one."""
    live, valid = live_rows(rb)
    assert tree_of(rb).check() == 0.0
    if not live:
        return 0
    slots = torch.tensor(sorted(live.values()))
    got = rb.storage.gather(slots)
    by_slot = {s: i for i, s in enumerate(slots.tolist())}
    lost = {}
    for key, slot in live.items():
        e, obs, nxt, real, term, k = ref.rows[key]
        if key not in valid:
            if real:
                lost.setdefault(e, []).append(key)
            continue
        assert real, f"key {key}: a reset step sampled as a transition"
        i = by_slot[slot]
        assert np.array_equal(got["obs"][i].numpy(), obs), f"obs of key {key} (env {e})"
        assert np.array_equal(got["next_obs"][i].numpy(), nxt), f"next_obs of key {key} (env {e}, k {k})"
        assert bool(got["terminated"][i]) == term
        assert float(got["discount"][i]) == np.float32(0.9 ** k)
    for e, keys in lost.items():
        mine = [k for k in valid if ref.rows[k][0] == e]
        assert not mine or max(keys) < min(mine), f"env {e}: rows lost that are newer than valid ones"
    if no_loss:
        assert not lost, f"rows lost: {lost}"
    return len(valid)


def run(rb, ref, sim, steps, flush_p, rng, sample_every=0, on_step=None):
    sim_obs = sim.reset()
    del sim_obs
    for t in range(steps):
        obs, act, r, nxt, te, tr, info = sim.step()
        keys = rb.step(obs, act, r, nxt, te, tr, info=info)
        want = ref.step(obs, nxt, te, tr, info)
        assert (keys is None and not want) or keys.tolist() == want
        if flush_p and rng.random() < flush_p:
            keys = rb.flush()
            want = ref.flush()
            assert (keys is None and not want) or keys.tolist() == want
        if sample_every and t % sample_every == sample_every - 1:
            check_sample(rb, ref, rng)
        if on_step is not None:
            on_step(t)


def check_sample(rb, ref, rng, B=16):
    _, valid = live_rows(rb)
    if not valid:
        return
    b = rb.sample(B)
    for i, key in enumerate(b.keys.tolist()):
        assert key in valid, f"sampled key {key}, not a valid row"
        e, obs, nxt, *_ = ref.rows[key]
        assert np.array_equal(b["obs"][i].numpy(), obs) and np.array_equal(b["next_obs"][i].numpy(), nxt)
    if isinstance(rb, PrioritizedReplayBuffer):  # updates never revive an invalidated row
        pool = list(ref.rows)[-4 * rb.capacity:]
        keys = torch.tensor(rng.choice(pool, 8).tolist() + b.keys[:8].tolist())
        rb.update_priorities(keys, torch.from_numpy(rng.standard_normal(16)))
        _, after = live_rows(rb)
        assert after <= valid


def tight_ring(monkeypatch, frac=0.5):
    """Rings too small for the row ring: frames overwritten while their rows are still stored."""
    monkeypatch.setattr(frames_mod, "frames_per_env", lambda C, E, S, n: max(int(frac * (-(-C // E))), S + n + 2))


# --------------------------------------------------------------------------- property tests
CASES = list(itertools.product(MODES, (1, 3, 5), (1, 2, 4)))


@pytest.mark.parametrize("i,case", list(enumerate(CASES)), ids=[f"{m}-n{n}-S{s}" for m, n, s in CASES])
def test_rows_match_the_reference(i, case, monkeypatch):
    """Each (mode, n, stack) with a padding, buffer kind, code path and ring drawn in turn, a
    ring of 36 rows that wraps ~16 times, random flushes, samples and updates."""
    mode, n, S = case
    padding = ("reset", "zero", "custom")[i % 3]
    cls = (PrioritizedReplayBuffer, ReplayBuffer)[(i // 3) % 2]
    path = ("host", "device")[i % 2]
    tight = (i // 2) % 2 == 1
    E = 1 + (i // 5) % 3
    rng = np.random.default_rng(i)
    if tight:
        tight_ring(monkeypatch)
    rb = make(cls, mode, n, S, E, capacity=36, path=path)
    ref = Reference(E, n, mode)
    sim = VecSim(E, S, mode, padding, rng)
    run(rb, ref, sim, 600 // E, 0.03, rng, sample_every=40)
    rb.flush()
    ref.flush()
    assert check_against(rb, ref) > 0


@pytest.mark.parametrize("mode", MODES)
def test_nothing_lost_with_a_ring_of_the_default_size(mode):
    """Next-step autoreset writes one frame per env per call: no row ever loses its frames;
    the other modes lose at most the oldest rows, and only with many short episodes."""
    E, n, S = 3, 3, 4
    rng = np.random.default_rng(7)
    rb = make(PrioritizedReplayBuffer, mode, n, S, E, capacity=60)
    ref = Reference(E, n, mode)
    sim = VecSim(E, S, mode, "reset", rng, p_term=0.02, p_trunc=0.01)
    counts = []
    run(rb, ref, sim, 400, 0.0, rng, on_step=lambda t: counts.append(check_against(rb, ref, mode == "next_step"))
        if t % 50 == 49 else None)
    assert min(counts) > 0


@pytest.mark.parametrize("path", ["host", "device"])
def test_frequent_flushes_with_next_step_autoreset(path):
    """Each flush makes the next call write a whole stack: the only extra frames next-step
    autoreset writes, so the only time the sweep has work (it is skipped once C rows came
    after the last flush). Checked every 10 steps against the reference."""
    E, n, S = 2, 3, 4
    rng = np.random.default_rng(21)
    rb = make(PrioritizedReplayBuffer, "next_step", n, S, E, capacity=24, path=path)
    ref = Reference(E, n, "next_step")
    sim = VecSim(E, S, "next_step", "custom", rng)
    run(rb, ref, sim, 300, 0.15, rng, sample_every=15,
        on_step=lambda t: check_against(rb, ref) if t % 10 == 9 else None)


def test_host_and_device_paths_are_bit_identical():
    """The numpy path and the device path's torch ops (run on the CPU) give the same rows,
    keys and samples, with a tight ring (frames overwritten under stored rows)."""
    outs = []
    for path in ("host", "device"):
        rng = np.random.default_rng(3)
        with pytest.MonkeyPatch.context() as mp:
            tight_ring(mp, 0.4)
            rb = make(PrioritizedReplayBuffer, "same_step", 3, 4, 3, capacity=40, path=path)
        ref = Reference(3, 3, "same_step")
        run(rb, ref, VecSim(3, 4, "same_step", "zero", rng, 0.15, 0.1), 200, 0.05, rng)
        b = rb.sample(64)
        outs.append((b.keys, b["obs"], b["next_obs"], tree_of(rb).leaves.clone(), rb.storage.key_of_pos.clone(),
                     rb.storage.pos.clone()))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_never_returns_a_row_whose_frames_were_overwritten(monkeypatch):
    """A ring of 6 frames per env under a row ring of 60: most rows lose their frames while
    stored. Every sample of thousands returns only rows whose stacks are intact."""
    tight_ring(monkeypatch, 0.1)
    E, n, S = 2, 3, 2
    rng = np.random.default_rng(11)
    for cls in (PrioritizedReplayBuffer, ReplayBuffer):
        rb = make(cls, "same_step", n, S, E, capacity=60)
        assert rb.storage.F == S + n + 2
        ref = Reference(E, n, "same_step")
        sim = VecSim(E, S, "same_step", "reset", rng, 0.2, 0.1)
        run(rb, ref, sim, 300, 0.05, rng, sample_every=10)
        valid = check_against(rb, ref)
        assert 0 < valid < 30


def test_checkpoint_round_trip(tmp_path):
    """save mid-run, load into a new buffer, go on with both: same keys, rows and samples."""
    E, n, S = 3, 3, 4
    rng = np.random.default_rng(5)
    sim = VecSim(E, S, "same_step", "custom", rng, 0.1, 0.05)
    a = make(PrioritizedReplayBuffer, "same_step", n, S, E, capacity=48)
    ref = Reference(E, n, "same_step")
    run(a, ref, sim, 120, 0.03, rng)
    a.update_priorities(a.sample(8).keys, torch.rand(8))
    a.save(tmp_path / "rb.ckpt")
    b = make(PrioritizedReplayBuffer, "same_step", n, S, E, capacity=48)
    b.load(tmp_path / "rb.ckpt")
    sa, sb = a.state_dict(), b.state_dict()
    for k, v in sa["frames"].items():
        assert (torch.equal(v, sb["frames"][k]) if isinstance(v, torch.Tensor) else v == sb["frames"][k]), k
    for t in range(80):
        obs, act, r, nxt, te, tr, info = sim.step()
        ka = a.step(obs, act, r, nxt, te, tr, info=info)
        kb = b.step(obs, act, r, nxt, te, tr, info=info)
        ref.step(obs, nxt, te, tr, info)
        assert torch.equal(ka, kb)
    x, y = a.sample(32), b.sample(32)
    assert torch.equal(x.keys, y.keys) and torch.equal(x["obs"], y["obs"]) and torch.equal(x["next_obs"], y["next_obs"])
    check_against(b, ref)


def test_checkpoint_into_a_buffer_with_newer_keys(monkeypatch):
    """A checkpoint loaded into a buffer that handed out more keys: keys shift by a multiple of
    the capacity (never reused), the frames' key table with them; invalidation still exact."""
    tight_ring(monkeypatch, 0.5)
    E, n, S = 2, 3, 2
    rng = np.random.default_rng(12)
    sim = VecSim(E, S, "disabled", "reset", rng, 0.15, 0.05)
    a = make(PrioritizedReplayBuffer, "disabled", n, S, E, capacity=30)
    ref = Reference(E, n, "disabled")
    run(a, ref, sim, 60, 0.0, rng)
    sd = a.state_dict()
    c = make(PrioritizedReplayBuffer, "disabled", n, S, E, capacity=30)
    run(c, Reference(E, n, "disabled"), VecSim(E, S, "disabled", "reset", np.random.default_rng(1)), 200, 0.0, rng)
    c.load_state_dict(sd)
    shift = c.sampler.counter.read()[0] - a.sampler.counter.read()[0]
    assert shift > 0 and shift % 30 == 0
    for t in range(60):
        obs, act, r, nxt, te, tr, info = sim.step()
        ka = a.step(obs, act, r, nxt, te, tr, info=info)
        kc = c.step(obs, act, r, nxt, te, tr, info=info)
        ref.step(obs, nxt, te, tr, info)
        assert (ka is None and kc is None) or torch.equal(kc, ka + shift)
    check_against(a, ref)
    assert torch.equal(tree_of(a).leaves, tree_of(c).leaves)
    x, y = a.sample(16), c.sample(16)
    assert torch.equal(x.keys + shift, y.keys) and torch.equal(x["obs"], y["obs"])


def test_checkpoint_mismatches_are_refused_and_change_nothing(tmp_path):
    E, n, S = 2, 3, 4
    rng = np.random.default_rng(6)
    a = make(PrioritizedReplayBuffer, "next_step", n, S, E, capacity=32)
    run(a, Reference(E, n, "next_step"), VecSim(E, S, "next_step", "reset", rng), 40, 0.0, rng)
    sd = a.state_dict()
    b = make(PrioritizedReplayBuffer, "next_step", n, S, E, capacity=32)
    run(b, Reference(E, n, "next_step"), VecSim(E, S, "next_step", "reset", np.random.default_rng(9)), 30, 0.0, rng)
    before = b.state_dict()

    def same_as_before():
        now = b.state_dict()
        assert torch.equal(now["frames"]["frames"], before["frames"]["frames"])
        assert torch.equal(now["frames"]["pos"], before["frames"]["pos"])
        assert torch.equal(now["sampler"]["tree"]["leaves"], before["sampler"]["tree"]["leaves"])

    bad = []
    s1 = dict(sd)
    s1["frames"] = dict(sd["frames"], frames=sd["frames"]["frames"][:-1])
    bad.append(s1)
    s2 = dict(sd)
    s2["frames"] = dict(sd["frames"], dlast=sd["frames"]["dlast"] + 10)
    bad.append(s2)
    s3 = dict(sd)
    s3["frames"] = dict(sd["frames"], stack=2)
    bad.append(s3)
    s4 = {k: v for k, v in sd.items() if k != "frames"}
    bad.append(s4)
    for s in bad:
        with pytest.raises(ValueError):
            b.load_state_dict(s)
        same_as_before()
    other = make(PrioritizedReplayBuffer, "next_step", n, 2, E, capacity=32)  # another stack size
    with pytest.raises(ValueError, match="spec"):
        other.load_state_dict(sd)
    naive = PrioritizedReplayBuffer(32, {"obs": ((S, *FRAME), torch.uint8), "action": ((), torch.int64)},
                                    n_step=n, gamma=0.9, num_envs=E)
    with pytest.raises(ValueError):
        naive.load_state_dict(sd)
    b.load_state_dict(sd)  # and the good one loads
    assert torch.equal(b.state_dict()["frames"]["frames"], sd["frames"]["frames"])


def test_clear_starts_a_new_stream():
    E, n, S = 2, 3, 2
    rng = np.random.default_rng(8)
    rb = make(ReplayBuffer, "next_step", n, S, E, capacity=30)
    run(rb, Reference(E, n, "next_step"), VecSim(E, S, "next_step", "zero", rng), 50, 0.0, rng)
    rb.clear()
    assert len(rb) == 0
    ref = Reference(E, n, "next_step")
    ref.key = rb.sampler.counter.read()[0]  # keys go on from the next multiple of the capacity
    run(rb, ref, VecSim(E, S, "next_step", "zero", rng), 60, 0.0, rng)
    assert check_against(rb, ref, no_loss=True) > 0


def test_docstring_example():
    import doctest
    res = doctest.testmod(frames_mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0 and res.attempted > 0


# --------------------------------------------------------------------------- memory
def test_nbytes_counts_every_device_tensor_and_meets_the_target():
    spec = {"obs": ((4, 84, 84), torch.uint8), "action": ((), torch.int64)}
    small = PrioritizedReplayBuffer(4000, spec, n_step=3, num_envs=8, frame_stack=4)
    held = small.storage.frames.nbytes + small.storage.key_of_pos.nbytes + small.storage.inner.nbytes
    tree = small.tree.state
    held += tree.sums.nbytes + tree.mins.nbytes
    assert held <= small.nbytes < held + 4096
    # the same layout at 1e6 rows, built on the meta device (every tensor, no memory)
    big = PrioritizedReplayBuffer(10 ** 6, spec, device="meta", n_step=3, num_envs=8, frame_stack=4)
    per_row = big.nbytes / 10 ** 6
    assert per_row <= 7300, per_row
    naive = PrioritizedReplayBuffer(10 ** 6, spec, device="meta", n_step=3, num_envs=8)
    assert naive.nbytes / 10 ** 6 > 56448
    # per-row cost is linear in the capacity: the small buffer predicts the big one
    assert abs(small.nbytes / 4000 - per_row) < 0.02 * per_row


# --------------------------------------------------------------------------- bad input
def _good_step(sim):
    obs, act, r, nxt, te, tr, info = sim.step()
    return dict(obs=obs, action=act, reward=r, next_obs=nxt, terminated=te, truncated=tr, info=info)


def snapshot(rb):
    s = rb.storage
    return [t.clone() for t in (s.frames, s.key_of_pos, s.pos, s.dlast, s.prev_done, s.pad, tree_of(rb).state.sums)] + \
        [rb.nstep._t, s.fresh]


def assert_unchanged(rb, snap):
    now = snapshot(rb)
    for a, b in zip(now, snap):
        assert (torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b)


def test_bad_construction():
    spec = {"obs": ((4, 84, 84), torch.uint8), "action": ((), torch.int64)}
    with pytest.raises(ValueError, match="n_step"):
        ReplayBuffer(100, spec, frame_stack=4)
    with pytest.raises(ValueError, match="leading axis"):
        ReplayBuffer(100, {"obs": ((84, 84, 4), torch.uint8), "action": ((), torch.int64)}, n_step=3, num_envs=2,
                     frame_stack=4)
    with pytest.raises(ValueError, match="frame_stack"):
        ReplayBuffer(100, spec, n_step=3, num_envs=2, frame_stack=0)
    rb = ReplayBuffer(100, spec, n_step=3, num_envs=2, frame_stack=4)
    with pytest.raises(ValueError, match="step"):
        rb.add({"obs": np.zeros((1, 4, 84, 84), np.uint8), "action": np.zeros(1, np.int64)})


@pytest.mark.parametrize("path", ["host", "device"])
def test_stacks_on_another_axis_are_refused_and_change_nothing(path):
    E, S = 2, 4
    rng = np.random.default_rng(2)
    # square frames: a stack on the last axis has the right shape, only the contents tell
    spec = {"obs": ((S, 4, 4), torch.uint8), "action": ((), torch.int64)}
    old = frames_mod._FORCE_DEVICE_OPS
    frames_mod._FORCE_DEVICE_OPS = path == "device"
    try:
        rb = PrioritizedReplayBuffer(40, spec, n_step=3, num_envs=E, frame_stack=S)
    finally:
        frames_mod._FORCE_DEVICE_OPS = old
    f = lambda: rng.integers(0, 256, (4, 4), dtype=np.uint8)  # noqa: E731
    good = [np.stack([f() for _ in range(S)]) for _ in range(E)]
    for t in range(6):
        obs = np.stack(good)
        good = [np.concatenate([g[1:], f()[None]]) for g in good]
        rb.step(obs, np.zeros(E, np.int64), np.zeros(E), np.stack(good), np.zeros(E, bool), np.zeros(E, bool))
    snap = snapshot(rb)
    obs = np.stack(good)
    nxt = np.stack([np.concatenate([g[1:], f()[None]]) for g in good])
    moved = lambda a: np.ascontiguousarray(np.moveaxis(a, 1, -1))  # noqa: E731
    z = dict(action=np.zeros(E, np.int64), reward=np.zeros(E), terminated=np.zeros(E, bool),
             truncated=np.zeros(E, bool))
    with pytest.raises(ValueError, match="obs"):  # obs is not the previous next_obs any more
        rb.step(moved(obs), next_obs=moved(nxt), **z)
    assert_unchanged(rb, snap)
    with pytest.raises(ValueError, match="overlap"):  # next_obs stacked on the last axis
        rb.step(obs, next_obs=moved(nxt), **z)
    assert_unchanged(rb, snap)
    with pytest.raises(ValueError, match="leading axis"):  # the shape tells
        rb.step(obs[:, :, :, :3], next_obs=nxt[:, :, :, :3], **z)
    assert_unchanged(rb, snap)
    # SB3's VecFrameStack: channels concatenated (2 channels a frame): stacks shift by 2
    nxt2 = np.concatenate([obs[:, 2:], rng.integers(0, 256, (E, 2, 4, 4), dtype=np.uint8)], axis=1)
    with pytest.raises(ValueError, match="VecFrameStack"):
        rb.step(obs, next_obs=nxt2, **z)
    assert_unchanged(rb, snap)
    with pytest.raises(TypeError):  # a bad extra field: refused before a frame is written
        rb.step(obs, next_obs=nxt, action=np.zeros(E, np.float32), **{k: v for k, v in z.items() if k != "action"})
    assert_unchanged(rb, snap)
    rb.step(obs, next_obs=nxt, **z)  # the good call goes through


def test_padding_that_is_not_gymnasiums_is_refused():
    E, S = 2, 3
    rng = np.random.default_rng(4)
    rb = make(PrioritizedReplayBuffer, "next_step", 2, S, E, capacity=40)
    sim = VecSim(E, S, "next_step", "zero", rng, p_term=0.3)
    sim.reset()
    saw_reset = False
    for _ in range(60):
        kw = _good_step(sim)
        prev = rb.storage._m_prev_done  # the envs whose next_obs this call starts an episode
        if prev.any():  # this call's next_obs holds episode-start stacks: spoil their padding
            bad = kw["next_obs"].copy()
            e = int(np.flatnonzero(prev)[0])
            bad[e, 0] = rng.integers(0, 256, FRAME, dtype=np.uint8)
            snap = snapshot(rb)
            with pytest.raises(ValueError, match="padd"):
                rb.step(**dict(kw, next_obs=bad))
            assert_unchanged(rb, snap)
            saw_reset = True
        rb.step(**kw)
    assert saw_reset


# --------------------------------------------------------------------------- gymnasium
def _pixel_env_cls():
    gym = pytest.importorskip("gymnasium")
    from gymnasium import spaces

    class PixelCounterEnv(gym.Env):
        """8x8 uint8 frames encoding (env tag, episode id, step); random episode lengths."""
        metadata = {"render_modes": []}

        def __init__(self, tag=0, min_len=2, max_len=9):
            self.tag, self.min_len, self.max_len = tag, min_len, max_len
            self.observation_space = spaces.Box(0, 255, (8, 8), np.uint8)
            self.action_space = spaces.Discrete(2)
            self.episode, self.t, self.ep_len = -1, 0, 0

        def _frame(self):
            f = np.zeros((8, 8), np.uint8)
            f[0], f[1], f[2], f[3] = 255, self.tag, self.episode % 256, self.t % 256
            f[4:] = (self.episode * 16 + self.t) % 256
            return f

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.episode += 1
            self.t = 0
            self.ep_len = int(self.np_random.integers(self.min_len, self.max_len + 1))
            return self._frame(), {}

        def step(self, action):
            self.t += 1
            return self._frame(), float(self.t), self.t >= self.ep_len, False, {}

    return gym, PixelCounterEnv


@pytest.mark.parametrize("mode,padding", [("NEXT_STEP", "reset"), ("SAME_STEP", "zero"), ("NEXT_STEP", "custom"),
                                          ("SAME_STEP", "reset")])
def test_gymnasium_pixel_env_through_frame_stack(mode, padding):
    gym, PixelCounterEnv = _pixel_env_cls()
    from gymnasium.vector import AutoresetMode, SyncVectorEnv
    from gymnasium.wrappers import FrameStackObservation, TimeLimit
    S, E, n = 4, 3, 3
    pad = {"reset": "reset", "zero": "zero", "custom": np.full((8, 8), 7, np.uint8)}[padding]

    def thunk(tag):
        return lambda: FrameStackObservation(TimeLimit(PixelCounterEnv(tag), 6), S, padding_type=pad)

    envs = SyncVectorEnv([thunk(i) for i in range(E)], autoreset_mode=getattr(AutoresetMode, mode))
    spec = {"obs": (envs.single_observation_space.shape, torch.uint8), "action": ((), torch.int64)}
    rb = PrioritizedReplayBuffer(50, spec, n_step=n, gamma=0.9, num_envs=E, frame_stack=S, autoreset_mode=envs,
                                 generator=torch.Generator().manual_seed(0))
    naive = PrioritizedReplayBuffer(50, spec, n_step=n, gamma=0.9, num_envs=E, autoreset_mode=envs,
                                    generator=torch.Generator().manual_seed(0))
    ref = Reference(E, n, rb.storage.autoreset_mode)
    obs, _ = envs.reset(seed=[1, 2, 3])
    for t in range(120):
        action = envs.action_space.sample()
        nxt, r, te, tr, info = envs.step(action)
        k = rb.step(obs, action, r, nxt, te, tr, info=info)
        k2 = naive.step(obs, action, r, nxt, te, tr, info=info)
        ref.step(obs, nxt, te, tr, info)
        assert (k is None and k2 is None) or torch.equal(k, k2)
        obs = nxt
    check_against(rb, ref, no_loss=mode == "NEXT_STEP")
    if mode == "NEXT_STEP":  # nothing lost: same priorities, same generator, the same rows as naively stored
        a, b = rb.sample(64), naive.sample(64)
        assert torch.equal(a.keys, b.keys)
        for f in ("obs", "next_obs", "reward", "discount", "terminated", "action"):
            assert torch.equal(a[f], b[f]), f
    else:  # episodes of 2-6 steps: one extra frame each, the oldest rows lose theirs (checked above)
        check_sample(rb, ref, np.random.default_rng(0), B=64)
        a = rb.sample(64)
    # the frames say what they are: a sampled next_obs is the same env's stream k steps on
    ob, nx = a["obs"].numpy(), a["next_obs"].numpy()
    assert (ob[:, -1, 1, 0] == nx[:, -1, 1, 0]).all()  # env tag
    envs.close()


# --------------------------------------------------------------------------- the CUDA path
triton_cpu = pytest.mark.skipif(not kernels.available("triton") or not kernels.triton_runs_on_cpu(),
                                reason="needs triton (interpreter on the CPU)")


@triton_cpu
@pytest.mark.parametrize("mode", ["next_step", "same_step", "disabled"])
def test_triton_path_makes_no_sync(mode):
    """backend='triton' under the interpreter, with the trap: host and device inputs, step,
    flush, sample, update: no sync, no host/device mix, no pageable copy; rows bit-identical
    to the host path's."""
    from _trap import Trap
    E, n, S = 2, 2, 3
    bufs = [make(PrioritizedReplayBuffer, mode, n, S, E, capacity=24, backend="triton"),
            make(PrioritizedReplayBuffer, mode, n, S, E, capacity=24)]
    rng = np.random.default_rng(0)
    sim = VecSim(E, S, mode, "zero", rng, 0.3, 0.1)
    sim.reset()
    steps = [_good_step(sim) for _ in range(12)]
    for kw in steps[:5]:
        for rb in bufs:
            rb.step(**kw)
    rb = bufs[0]
    rb.sample(4)

    def check(trap, what, fn, *a, **k):
        trap.reset()
        out = trap.call(fn, *a, **k)
        assert not trap.events, f"{what}: {trap.report()}"
        return out

    with Trap(rb) as trap:
        for kw in steps[5:8]:
            check(trap, "step (host inputs)", rb.step, **kw)
        if mode != "same_step":  # (same-step device inputs read the final obs mask on a CPU: not this test's)
            for kw in steps[8:10]:
                dev = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in kw.items() if k != "info"}
                trap.mark_device(dev)
                check(trap, "step (device inputs)", rb.step, **dev)
        check(trap, "flush", rb.flush)
        s = check(trap, "sample", rb.sample, 8)
        td = torch.rand(8)
        trap.mark_device(td)
        check(trap, "update", rb.update_priorities, s.keys, td)
    host = bufs[1]
    rest = steps[5:8] + (steps[8:10] if mode != "same_step" else [])
    for kw in rest:
        host.step(**kw)
    host.flush()
    host.update_priorities(s.keys, td)
    slots = torch.arange(24)
    a, b = rb.storage.gather(slots), host.storage.gather(slots)
    v = tree_of(host).leaves > 0
    assert torch.equal(tree_of(rb).leaves, tree_of(host).leaves)
    for f in ("obs", "next_obs"):
        assert torch.equal(a[f][v], b[f][v])


@triton_cpu
@pytest.mark.parametrize("reset_ok", [True, False])
def test_stacks_kernel_matches_its_twin(reset_ok):
    """kernels/frames.py: the one-launch gather of rebuilt stacks against the torch twin."""
    from gpu_replay.kernels import frames as kf
    g = torch.Generator().manual_seed(0)
    E, F, S, W, C, B = 3, 11, 4, 5, 20, 9
    frames_w = torch.randint(-2 ** 62, 2 ** 62, (E * F + 2, W), generator=g)
    q = torch.randint(0, 10 ** 6, (2, C), generator=g)
    d = torch.randint(0, S, (2, C), generator=g)
    e = torch.randint(0, E, (2, C), generator=g)
    refs = (e << 48) | (q << 8) | torch.minimum(d, q)
    slots = torch.randint(0, C, (B,), generator=g)
    pad = torch.tensor([True, reset_ok, not reset_ok])
    base, lag = torch.arange(E) * F, torch.arange(S - 1, -1, -1)
    want = torch.empty(2 * B * S, W, dtype=torch.int64)
    got = torch.empty_like(want)
    kf.stacks_torch(frames_w, refs[0], refs[1], slots, base, lag, pad[1], F, E * F, want)
    kf.stacks_triton(frames_w, refs[0], refs[1], slots, pad, S, F, E * F, got)
    assert torch.equal(got, want)

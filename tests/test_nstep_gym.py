"""NStep with real gymnasium vector envs (CartPole) in both autoreset modes, against the
per-episode reference of test_nstep (skipped where gymnasium is not installed)."""
import numpy as np
import pytest
import torch

from gpu_replay.nstep import NStep
from test_nstep import check, reference

gym = pytest.importorskip("gymnasium")


class LogSteps(gym.Wrapper):
    """Logs what the single env really did (its own step/reset calls) and randomizes the
    reward, so the reference does not depend on the vector env's autoreset bookkeeping."""

    def __init__(self, env, idx, log, clock, seed):
        super().__init__(env)
        self.idx, self.log, self.clock = idx, log, clock
        self.rng = np.random.default_rng(seed)
        self.last = None

    def reset(self, **kw):
        obs, info = self.env.reset(**kw)
        self.last = obs
        self.log[self.idx].append(("cut",))
        return obs, info

    def step(self, action):
        obs, r, term, trunc, info = self.env.step(action)
        r = float(r) * float(self.rng.uniform(-1.0, 2.0))
        call = self.clock[0]
        self.log[self.idx].append(("step", dict(
            key=call * self.clock[1] + self.idx, obs=self.last.copy(), action=int(action), aux=None,
            r=np.float32(r), next_obs=obs.copy(), term=bool(term), trunc=bool(trunc), real=True)))
        self.last = obs
        return obs, r, term, trunc, info


def gym_run(autoreset, n, gamma, E=4, T=150, seed=0):
    log = [[] for _ in range(E)]
    clock = [-1, E]  # [current vector call, num_envs]
    limits = [4, 7, 11, 500]

    def make(i):
        return lambda: LogSteps(gym.make("CartPole-v1", max_episode_steps=limits[i % 4]), i, log, clock,
                                seed + i)

    envs = gym.vector.SyncVectorEnv([make(i) for i in range(E)], autoreset_mode=autoreset)
    mode = {gym.vector.AutoresetMode.NEXT_STEP: "next_step",
            gym.vector.AutoresetMode.SAME_STEP: "same_step"}[autoreset]
    # the gymnasium enum is accepted as is
    ns = NStep(E, n, gamma, autoreset_mode=autoreset)
    assert ns.autoreset_mode == mode
    obs, _ = envs.reset(seed=seed)
    rng = np.random.default_rng(seed)
    outs = []
    reset_tags = []
    for call in range(T):
        clock[0] = call
        action = rng.integers(0, 2, size=E)
        before = {e: len(log[e]) for e in range(E)}
        nxt, r, term, trunc, info = envs.step(action)
        for e in range(E):  # this call reset env e instead of stepping it (next-step autoreset)
            if log[e][before[e]:] == [("cut",)]:
                reset_tags.append(call * E + e)
        tag = call * E + np.arange(E)
        aux = np.stack([tag, -tag], 1).astype(np.float32)
        out = ns.step(obs, action, r, nxt, term, trunc, info=info, tag=tag, aux_action=aux)
        if out is not None:
            outs.append(out)
        obs = nxt
    out = ns.flush()
    if out is not None:
        outs.append(out)
    envs.close()
    for e in range(E):  # the run's end cuts the unfinished episodes
        log[e].append(("cut",))
    assert outs, "the run should emit rows"
    rows = {k: torch.cat([o[0][k] for o in outs]).numpy() for k in outs[0][0]}
    valid = torch.cat([o[1] for o in outs]).numpy()
    return rows, valid, reference(log, n, gamma), reset_tags


@pytest.mark.parametrize("n,gamma", [(1, 0.9), (3, 0.99), (5, 0.5)])
def test_gymnasium_next_step_autoreset(n, gamma):
    rows, valid, ref, reset_tags = gym_run(gym.vector.AutoresetMode.NEXT_STEP, n, gamma)
    assert reset_tags, "the run should contain reset steps"
    tags = rows["tag"]
    # no reset-step row is ever valid, and every reset step did come out (as invalid)
    assert not valid[np.isin(tags, reset_tags)].any()
    assert set(reset_tags) <= set(tags.tolist())
    keyed = {k: dict(v, aux=np.array([k, -k], np.float32)) for k, v in ref.items()}
    check(rows, valid, keyed, lambda r: r["tag"], expect_all_valid=False, what=f"next_step n={n}")
    assert any(v["terminated"] for v in ref.values()), "the run should contain terminations"
    assert any(v["ends_truncated"] and not v["terminated"] for v in ref.values()), \
        "the run should contain truncations"


@pytest.mark.parametrize("n,gamma", [(1, 0.9), (3, 0.99), (5, 0.5)])
def test_gymnasium_same_step_autoreset(n, gamma):
    rows, valid, ref, reset_tags = gym_run(gym.vector.AutoresetMode.SAME_STEP, n, gamma)
    assert not reset_tags
    keyed = {k: dict(v, aux=np.array([k, -k], np.float32)) for k, v in ref.items()}
    # every call of every env is a transition; next_obs of done envs is info["final_obs"]
    check(rows, valid, keyed, lambda r: r["tag"], expect_all_valid=True, what=f"same_step n={n}")

"""DQN with 3-step returns and prioritized replay on CartPole-v1, one file (CleanRL's dqn.py style).

    python bench/dqn.py                                        # gpu_replay, seed 1, cuda if available
    python bench/dqn.py --buffer gpu_replay peer --seeds 1 2 3 # the agent with each buffer, same seeds

Agent: double DQN, target ``reward + discount * (1 - terminated) * Q_target(next_obs,
argmax_a Q(next_obs, a))`` where the buffer's n-step stage gives ``reward`` (the 3-step
return), ``discount`` (gamma**k, k <= 3 steps actually taken) and ``terminated`` (the episode
terminated inside the k steps; a time-limit truncation bootstraps). Loss: IS-weighted Huber;
new priorities from the TD errors; beta annealed with ``gpu_replay.linear_beta``;
epsilon-greedy; soft (Polyak) target updates.

Environment: ``gymnasium.vector.SyncVectorEnv`` with gymnasium's default next-step autoreset:
the ``step`` after an env's episode ended only resets that env (its action is ignored, reward
0). The buffer is told (``autoreset_mode=``) and stores those rows as invalid; the returns
here skip them too. Env steps are counted as CleanRL does: vector steps * num_envs, reset
steps included.

Buffers (``--buffer``; same agent, hyperparameters and seeds):
  gpu_replay  gpu_replay.PrioritizedReplayBuffer(n_step=3, ...) fed by ``.step()``, on the
              training device.
  peer        the seeds' tutorial PER (shared/seeds/004: the ``SumTree`` class, imported from
              bench/peers/seeds_sumtree.py; a Python walk per item, ``random.uniform`` per
              sampled item) with the usual user code around it (numpy columns, new rows at the
              running max priority, IS weights (N P(i))^-beta / max), fed by a per-env Python
              deque n-step like the seeds' ``NStepReplayBuffer``. On the CPU; sampled batches
              are copied to the training device (inside the timed buffer call).
  cpprb       cpprb.PrioritizedReplayBuffer (C++ trees) fed by the same deque n-step.

Reported per run: env steps/s, learner updates/s, the share of wall time spent inside buffer
calls (``step``, ``sample``, ``update_priorities``, timed with ``time.perf_counter``; on CUDA
those calls only enqueue work unless ``--profile`` synchronizes around them) and the
episodic returns. "Solved": the mean return of the last 100 finished episodes >= 475; the
run stops there (``--stop-when-solved``). Results: ``bench/results/dqn-<buffer>-<device>-<date>.json``
and ``.png`` (return vs env steps).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import random
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import gpu_replay  # noqa: E402
from gpu_replay import PrioritizedReplayBuffer, linear_beta  # noqa: E402

BUFFERS = ("gpu_replay", "peer", "cpprb")


@dataclass
class Args:
    seed: int = 1
    """seed of the run (torch, numpy, random, the envs, the buffer's generator)"""
    env_id: str = "CartPole-v1"
    num_envs: int = 4
    """parallel envs in the SyncVectorEnv"""
    total_timesteps: int = 200_000
    """the step budget: env steps (vector steps * num_envs)"""
    buffer: str = "gpu_replay"
    """gpu_replay | peer | cpprb"""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda"""
    # replay
    buffer_size: int = 100_000
    n_step: int = 3
    gamma: float = 0.99
    alpha: float = 0.6
    """PER priority exponent"""
    beta0: float = 0.4
    """IS exponent at the start; annealed linearly to 1.0 over total_timesteps"""
    per_eps: float = 1e-6
    """p = (|td| + per_eps) ** alpha"""
    # learner
    learning_rate: float = 5e-4
    batch_size: int = 128
    hidden: int = 128
    learning_starts: int = 2_000
    """env steps before the first update"""
    train_frequency: int = 1
    """vector steps between learner updates"""
    tau: float = 0.005
    """soft target update rate (1.0 with target_network_frequency > 1: hard updates)"""
    target_network_frequency: int = 1
    """learner updates between target updates"""
    max_grad_norm: float = 10.0
    # exploration
    start_e: float = 1.0
    end_e: float = 0.01
    exploration_fraction: float = 0.1
    """fraction of total_timesteps over which epsilon goes from start_e to end_e"""
    # solving / reporting
    solve_return: float = 475.0
    solve_window: int = 100
    stop_when_solved: bool = True
    profile: bool = False
    """on CUDA: synchronize around every buffer call so its time is device time"""
    log_every: int = 10_000
    """env steps between progress lines (0: quiet)"""


# ------------------------------------------------------------------------------ the network
class QNetwork(nn.Module):
    def __init__(self, obs_dim: int, n_actions: int, hidden: int = 128):
        super().__init__()
        self.network = nn.Sequential(
            nn.Linear(obs_dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, n_actions),
        )

    def forward(self, x):
        return self.network(x)


def linear_schedule(start_e: float, end_e: float, duration: int, t: int) -> float:
    slope = (end_e - start_e) / duration
    return max(slope * t + start_e, end_e)


def make_env(env_id: str, seed: int):
    def thunk():
        env = gym.make(env_id)
        env.action_space.seed(seed)
        return env
    return thunk


# ------------------------------------------------------------------------------ peer buffers
class DequeNStep:
    """Per-env n-step windows as Python deques, like the seeds' ``NStepReplayBuffer``: a full
    window emits its oldest transition; an episode end emits everything left, each with the
    steps it has. Same rows as gpu_replay's NStep (reward = the k-step return, discount =
    gamma**k, terminated = the episode terminated within them; truncation bootstraps), and
    the same next-step autoreset rule (the call after a done is a reset step, skipped)."""

    def __init__(self, num_envs: int, n: int, gamma: float):
        self.n, self.gamma = n, gamma
        self.windows = [deque() for _ in range(num_envs)]
        self.prev_done = [False] * num_envs

    def _emit(self, q):
        ret = 0.0
        for i, (_, _, r, _, _) in enumerate(q):
            ret += (self.gamma ** i) * r
        o, a, _, _, _ = q[0]
        _, _, _, nxt, term = q[-1]
        return o, a, ret, nxt, self.gamma ** len(q), term

    def step(self, obs, action, reward, next_obs, terminated, truncated) -> list:
        out = []
        for e, q in enumerate(self.windows):
            if self.prev_done[e]:          # next-step autoreset: this call only reset env e
                self.prev_done[e] = False
                continue
            q.append((obs[e].copy(), int(action[e]), float(reward[e]), next_obs[e].copy(), bool(terminated[e])))
            if len(q) == self.n:
                out.append(self._emit(q))
                q.popleft()
            if terminated[e] or truncated[e]:
                while q:
                    out.append(self._emit(q))
                    q.popleft()
                self.prev_done[e] = True
        return out


class PeerBatch:
    """What ``sample`` returns, shaped like gpu_replay's Batch: ``b["obs"]``, ``.keys``, ``.weights``."""

    def __init__(self, fields, keys, weights):
        self.fields, self.keys, self.weights = fields, keys, weights

    def __getitem__(self, name):
        return self.fields[name]


class _NumpyColumns:
    FIELDS = ("obs", "action", "reward", "next_obs", "discount", "terminated")

    def _columns(self, capacity, obs_shape):
        return {"obs": np.zeros((capacity, *obs_shape), np.float32), "action": np.zeros(capacity, np.int64),
                "reward": np.zeros(capacity, np.float32), "next_obs": np.zeros((capacity, *obs_shape), np.float32),
                "discount": np.zeros(capacity, np.float32), "terminated": np.zeros(capacity, np.bool_)}

    def _to_device(self, cols: dict, idx) -> dict:
        return {k: torch.from_numpy(v[idx]).to(self.device) for k, v in cols.items()}


class SeedsPER(_NumpyColumns):
    """The seeds' tutorial PER (its SumTree class, a Python loop per item) + DequeNStep."""

    name = "peer"

    def __init__(self, capacity, obs_shape, n_step, gamma, num_envs, alpha, eps, device, seed):
        from bench.peers.seeds_sumtree import SumTree  # the tutorial's class, unchanged
        self.tree = SumTree(capacity)
        self.capacity, self.alpha, self.eps, self.device = capacity, alpha, eps, torch.device(device)
        self.data = self._columns(capacity, obs_shape)
        self.nstep = DequeNStep(num_envs, n_step, gamma)
        self.max_p = 1.0          # running max of stored priorities (already ** alpha)
        self.n_entries = 0
        self.num_added = 0
        self.redraws = 0          # draws that hit an empty leaf (tutorial's `s <= left` + float drift)
        self.rng = random.Random(seed)

    def __len__(self):
        return self.n_entries

    def step(self, obs, action, reward, next_obs, terminated, truncated):
        for row in self.nstep.step(obs, action, reward, next_obs, terminated, truncated):
            w = self.tree.write
            for k, v in zip(self.FIELDS, row):
                self.data[k][w] = v
            self.tree.add(self.max_p)
            self.n_entries = min(self.n_entries + 1, self.capacity)
            self.num_added += 1

    def sample(self, batch_size, beta):
        tree, total = self.tree, self.tree.total()
        idxs, prios, data_idxs = [], [], []
        for _ in range(batch_size):
            while True:
                idx, p, data_idx = tree.get(self.rng.uniform(0, total))
                if p > 0 and data_idx < self.n_entries:
                    break
                self.redraws += 1
            idxs.append(idx)
            prios.append(p)
            data_idxs.append(data_idx)
        weights = np.power(self.n_entries * (np.asarray(prios) / total), -beta)
        weights /= weights.max()
        fields = self._to_device(self.data, np.asarray(data_idxs))
        return PeerBatch(fields, idxs, torch.as_tensor(weights, dtype=torch.float32, device=self.device))

    def update_priorities(self, keys, td_errors):
        for idx, d in zip(keys, td_errors.abs().cpu().tolist()):
            p = (d + self.eps) ** self.alpha
            self.tree.update(idx, p)
            if p > self.max_p:
                self.max_p = p


class CpprbPER(_NumpyColumns):
    """cpprb.PrioritizedReplayBuffer (C++ segment trees) + DequeNStep."""

    name = "cpprb"

    def __init__(self, capacity, obs_shape, n_step, gamma, num_envs, alpha, eps, device, seed):
        import cpprb
        np.random.seed(seed)  # cpprb samples with numpy's global generator
        env_dict = {"obs": {"shape": obs_shape, "dtype": np.float32}, "action": {"dtype": np.int64},
                    "reward": {}, "next_obs": {"shape": obs_shape, "dtype": np.float32},
                    "discount": {}, "terminated": {"dtype": np.bool_}}
        self.rb = cpprb.PrioritizedReplayBuffer(capacity, env_dict, alpha=alpha, eps=eps)
        self.device = torch.device(device)
        self.nstep = DequeNStep(num_envs, n_step, gamma)
        self.num_added = 0

    def __len__(self):
        return self.rb.get_stored_size()

    def step(self, obs, action, reward, next_obs, terminated, truncated):
        rows = self.nstep.step(obs, action, reward, next_obs, terminated, truncated)
        if rows:
            cols = list(zip(*rows))
            self.rb.add(**{k: np.asarray(v) for k, v in zip(self.FIELDS, cols)})
            self.num_added += len(rows)

    def sample(self, batch_size, beta):
        s = self.rb.sample(batch_size, beta)
        fields = {k: torch.from_numpy(np.ascontiguousarray(s[k] if k.endswith("obs") else s[k].reshape(batch_size)))
                  .to(self.device) for k in self.FIELDS}
        w = torch.as_tensor(s["weights"], dtype=torch.float32, device=self.device).reshape(batch_size)
        return PeerBatch(fields, s["indexes"], w)

    def update_priorities(self, keys, td_errors):
        self.rb.update_priorities(keys, td_errors.abs().cpu().numpy().astype(np.float64))  # cpprb: (|d| + eps) ** alpha


def make_buffer(args: Args, obs_shape, device: torch.device):
    if args.buffer == "gpu_replay":
        spec = {"obs": (obs_shape, torch.float32), "action": ((), torch.int64)}
        return PrioritizedReplayBuffer(
            args.buffer_size, spec, device=device, alpha=args.alpha, eps=args.per_eps,
            generator=torch.Generator(device).manual_seed(args.seed),
            n_step=args.n_step, gamma=args.gamma, num_envs=args.num_envs,
            autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    cls = {"peer": SeedsPER, "cpprb": CpprbPER}.get(args.buffer)
    if cls is None:
        raise ValueError(f"buffer: expected one of {BUFFERS}, got {args.buffer!r}")
    return cls(args.buffer_size, obs_shape, args.n_step, args.gamma, args.num_envs,
               args.alpha, args.per_eps, device, args.seed)


# ------------------------------------------------------------------------------ timing
class BufferClock:
    """Wall time inside buffer calls, per op. With ``sync`` (CUDA --profile) the device is
    synchronized before and after each call, so the time includes the call's device work."""

    def __init__(self, sync: bool):
        self.sync = sync
        self.seconds = {"step": 0.0, "sample": 0.0, "update": 0.0}
        self.calls = {"step": 0, "sample": 0, "update": 0}

    def run(self, op, fn, *a):
        if self.sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(*a)
        if self.sync:
            torch.cuda.synchronize()
        self.seconds[op] += time.perf_counter() - t0
        self.calls[op] += 1
        return out


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ------------------------------------------------------------------------------ training
def train(args: Args) -> dict:
    """One run; returns its summary (see the module docstring)."""
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)

    envs = gym.vector.SyncVectorEnv([make_env(args.env_id, args.seed + i) for i in range(args.num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    assert isinstance(envs.single_action_space, gym.spaces.Discrete), "only discrete action space is supported"
    obs_shape = envs.single_observation_space.shape
    n_actions = int(envs.single_action_space.n)

    q_network = QNetwork(math.prod(obs_shape), n_actions, args.hidden).to(device)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate)
    target_network = QNetwork(math.prod(obs_shape), n_actions, args.hidden).to(device)
    target_network.load_state_dict(q_network.state_dict())

    rb = make_buffer(args, obs_shape, device)
    clock = BufferClock(sync=args.profile and device.type == "cuda")
    act_rng = np.random.default_rng(args.seed)

    N = args.num_envs
    num_iterations = args.total_timesteps // N
    ep_return = np.zeros(N)
    ep_length = np.zeros(N, dtype=np.int64)
    reset_step = np.zeros(N, dtype=bool)   # next-step autoreset: this env's next step() only resets it
    episodes = []                           # (env step at which it finished, return, length)
    window = deque(maxlen=args.solve_window)
    solved_at = None
    losses, q_means = [], []
    loss_sum, loss_n, all_finite = 0.0, 0, True
    updates = 0
    global_step = 0

    obs, _ = envs.reset(seed=args.seed)
    start = time.perf_counter()
    next_log = args.log_every
    for iteration in range(num_iterations):
        # ---- act: epsilon-greedy over the vector env
        epsilon = linear_schedule(args.start_e, args.end_e, int(args.exploration_fraction * args.total_timesteps),
                                  global_step)
        with torch.no_grad():
            greedy = q_network(torch.as_tensor(obs, device=device)).argmax(dim=1).cpu().numpy()
        explore = act_rng.random(N) < epsilon
        actions = np.where(explore, act_rng.integers(0, n_actions, N), greedy)

        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        global_step += N

        # ---- episode statistics (reset steps are not part of any episode)
        real = ~reset_step
        ep_return[real] += rewards[real]
        ep_length[real] += 1
        done = (terminations | truncations) & real
        for e in np.flatnonzero(done):
            episodes.append((global_step, float(ep_return[e]), int(ep_length[e])))
            window.append(float(ep_return[e]))
            ep_return[e], ep_length[e] = 0.0, 0
            if solved_at is None and len(window) == args.solve_window and np.mean(window) >= args.solve_return:
                solved_at = global_step
        reset_step = done

        # ---- store: one step per env through the buffer's n-step stage
        clock.run("step", rb.step, obs, actions, rewards, next_obs, terminations, truncations)
        obs = next_obs

        # ---- learn
        if global_step > args.learning_starts and iteration % args.train_frequency == 0:
            beta = linear_beta(global_step, args.total_timesteps, args.beta0, 1.0)
            s = clock.run("sample", rb.sample, args.batch_size, beta)
            with torch.no_grad():
                next_actions = q_network(s["next_obs"]).argmax(dim=1, keepdim=True)
                next_q = target_network(s["next_obs"]).gather(1, next_actions).squeeze(1)
                td_target = s["reward"] + s["discount"] * (1.0 - s["terminated"].float()) * next_q
            old_val = q_network(s["obs"]).gather(1, s["action"].long().unsqueeze(1)).squeeze(1)
            td_error = td_target - old_val
            loss = (s.weights * F.smooth_l1_loss(old_val, td_target, reduction="none")).mean()

            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(q_network.parameters(), args.max_grad_norm)
            optimizer.step()
            clock.run("update", rb.update_priorities, s.keys, td_error.detach())
            updates += 1

            if updates % args.target_network_frequency == 0:
                with torch.no_grad():
                    for tp, p in zip(target_network.parameters(), q_network.parameters()):
                        tp.lerp_(p, args.tau)
            if updates % 100 == 0:  # reading the loss syncs on CUDA: only every 100 updates
                lv = float(loss.detach())
                all_finite &= math.isfinite(lv)
                losses.append((global_step, lv))
                q_means.append((global_step, float(old_val.detach().mean())))

        if args.log_every and global_step >= next_log:
            next_log += args.log_every
            el = time.perf_counter() - start
            avg = float(np.mean(window)) if window else float("nan")
            print(f"  [{args.buffer} seed {args.seed}] step {global_step:>7d}  episodes {len(episodes):>4d}  "
                  f"avg100 {avg:6.1f}  eps {epsilon:.3f}  loss {losses[-1][1] if losses else float('nan'):.4f}  "
                  f"{global_step / el:6.0f} env steps/s  {updates / el:5.0f} upd/s  "
                  f"buffer {sum(clock.seconds.values()) / el:5.1%}", flush=True)
        if solved_at is not None and args.stop_when_solved:
            break

    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    envs.close()

    buffer_s = sum(clock.seconds.values())
    rets = [r for _, r, _ in episodes]
    summary = {
        "buffer": args.buffer,
        "seed": args.seed,
        "device": str(device),
        "solved": solved_at is not None,
        "solved_at_env_step": solved_at,
        "env_steps": global_step,
        "updates": updates,
        "wall_s": wall,
        "env_steps_per_s": global_step / wall,
        "updates_per_s": updates / wall,
        "buffer_s": buffer_s,
        "buffer_share": buffer_s / wall,
        "buffer_s_by_op": dict(clock.seconds),
        "buffer_us_per_call": {k: 1e6 * clock.seconds[k] / max(clock.calls[k], 1) for k in clock.seconds},
        "buffer_timing": "synchronized (device time included)" if clock.sync else
                         ("enqueue time only (CUDA, no --profile)" if device.type == "cuda" else "host wall time"),
        "episodes": len(episodes),
        "avg_return_last_window": float(np.mean(window)) if window else None,
        "max_avg_return": _max_running_mean(rets, args.solve_window),
        "rows_added": int(rb.num_added),
        "rows_stored": len(rb),
        "losses_finite": bool(all_finite),
        "last_loss": losses[-1][1] if losses else None,
        "curve": {"env_step": [s for s, _, _ in episodes], "return": rets},
        "loss_curve": losses,
        "q_mean_curve": q_means,
    }
    if isinstance(rb, PrioritizedReplayBuffer):
        summary["buffer_backend"] = rb.backend
        summary["buffer_stats"] = rb.stats()
    elif isinstance(rb, SeedsPER):
        summary["buffer_backend"] = "python+numpy"
        summary["buffer_stats"] = {"redraws": rb.redraws}
    else:
        summary["buffer_backend"] = "cpprb"
    return summary


def _max_running_mean(x, w):
    if len(x) < w:
        return None
    c = np.cumsum(np.insert(np.asarray(x, dtype=np.float64), 0, 0.0))
    return float(((c[w:] - c[:-w]) / w).max())


# ------------------------------------------------------------------------------ reports
def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "gymnasium": gym.__version__,
           "numpy": np.__version__, "gpu_replay": gpu_replay.__version__, "machine": platform.machine(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        out["loadavg"] = os.getloadavg()
    except OSError:
        pass
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    try:
        import cpprb  # noqa: F401
        from importlib.metadata import version
        out["cpprb"] = version("cpprb")
    except Exception:
        pass
    return out


def aggregate(runs: list[dict], args: Args) -> dict:
    solved = [r for r in runs if r["solved"]]
    keys = ("wall_s", "env_steps_per_s", "updates_per_s", "buffer_share")
    return {
        "seeds": [r["seed"] for r in runs],
        "solved": f"{len(solved)}/{len(runs)}",
        "solved_at_env_step": [r["solved_at_env_step"] for r in runs],
        "step_budget": args.total_timesteps,
        **{f"mean_{k}": float(np.mean([r[k] for r in runs])) for k in keys},
    }


def plot(runs: list[dict], path: Path, title: str, window: int, threshold: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, r in enumerate(runs):
        color = f"C{i}"
        xs, ys = np.asarray(r["curve"]["env_step"]), np.asarray(r["curve"]["return"])
        ax.plot(xs, ys, color=color, alpha=0.2, lw=0.8)
        if len(ys) >= 1:
            k = min(window, len(ys))
            avg = np.convolve(ys, np.ones(k) / k, mode="valid") if len(ys) >= k else ys
            ax.plot(xs[k - 1:], avg, color=color, lw=1.8,
                    label=f"{r['buffer']} seed {r['seed']}" + (f" (solved @ {r['solved_at_env_step']:,})"
                                                               if r["solved"] else " (not solved)"))
    ax.axhline(threshold, color="k", ls="--", lw=0.8)
    ax.set_xlabel("env steps")
    ax.set_ylabel(f"episodic return (thin: episodes, thick: mean of last {window})")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None) -> tuple[Args, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults = Args()
    for f in dataclasses.fields(Args):
        if f.name in ("seed", "buffer"):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            p.add_argument(flag, type=type(default), default=default)
    p.add_argument("--buffer", nargs="+", choices=BUFFERS, default=[defaults.buffer],
                   help="one run per buffer and seed")
    p.add_argument("--seeds", nargs="+", type=int, default=[defaults.seed])
    p.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    p.add_argument("--no-save", action="store_true", help="write no JSON/PNG")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    ns = p.parse_args(argv)
    kw = {f.name: getattr(ns, f.name) for f in dataclasses.fields(Args) if f.name not in ("seed", "buffer")}
    return Args(**kw), ns


def main(argv=None) -> dict:
    base, ns = parse_args(argv)
    torch.set_num_threads(ns.threads)
    device = resolve_device(base.device)
    date = datetime.date.today().isoformat()
    env_info = versions()
    results = {}
    for buf in ns.buffer:
        runs = []
        for seed in ns.seeds:
            args = dataclasses.replace(base, buffer=buf, seed=seed)
            r = train(args)
            runs.append(r)
            print(f"{buf:>10s} seed {seed}: solved {'@ %d' % r['solved_at_env_step'] if r['solved'] else 'NO'}"
                  f"  env steps {r['env_steps']}  wall {r['wall_s']:.1f}s  {r['env_steps_per_s']:.0f} env steps/s"
                  f"  {r['updates_per_s']:.0f} updates/s  buffer {r['buffer_share']:.1%}"
                  f"  avg100 {r['avg_return_last_window']}", flush=True)
        hp = {k: v for k, v in dataclasses.asdict(base).items() if k not in ("seed", "log_every")}
        hp["buffer"] = buf
        summary = {"command": " ".join([Path(sys.argv[0]).name] + (sys.argv[1:] if argv is None else list(argv))),
                   "date": date, "device": str(device), "hyperparameters": hp, "versions": env_info,
                   "aggregate": aggregate(runs, base), "runs": runs}
        results[buf] = summary
        if not ns.no_save:
            out = Path(ns.out_dir)
            out.mkdir(parents=True, exist_ok=True)
            stem = out / f"dqn-{buf}-{device.type}-{date}"
            stem.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
            plot(runs, stem.with_suffix(".png"),
                 f"DQN + 3-step + PER ({buf}) on {base.env_id}, {device.type}, budget {base.total_timesteps:,} env steps",
                 base.solve_window, base.solve_return)
            summary["paths"] = [str(stem.with_suffix(".json")), str(stem.with_suffix(".png"))]
            print(f"wrote {stem}.json / .png")

    if len(results) > 1:
        print(f"\n{'buffer':>10s} {'solved':>7s} {'steps to solve':>30s} {'wall s':>7s} {'env st/s':>9s}"
              f" {'upd/s':>7s} {'buffer %':>9s}")
        for buf, s in results.items():
            a = s["aggregate"]
            print(f"{buf:>10s} {a['solved']:>7s} {str(a['solved_at_env_step']):>30s} {a['mean_wall_s']:7.1f}"
                  f" {a['mean_env_steps_per_s']:9.0f} {a['mean_updates_per_s']:7.0f} {a['mean_buffer_share']:9.1%}")
    return results


if __name__ == "__main__":
    main()

"""CleanRL's dqn.py loop with stable-baselines3's ReplayBuffer, then with gpu_replay's adapter.

    python -m bench.cleanrl_dqn                      # 50k steps each, CartPole-v1, CPU (~3 minutes)
    python -m bench.cleanrl_dqn --total-timesteps 10000

The agent is CleanRL's ``dqn.py`` (Q network 120-84, Adam 2.5e-4, epsilon linear from 1 to 0.05
over half the run, train every 10 steps from step 10k on with batch 128, target network every
500 steps, ``handle_timeout_termination=False`` and the true final observation on truncation),
run once with ``stable_baselines3.common.buffers.ReplayBuffer`` and once with
``gpu_replay.compat.SB3ReplayBuffer`` -- the only change is the import -- over the same env
steps from the same seed. Reported: wall time, env steps/s, time inside the buffer's ``add`` and
``sample``, per call. gymnasium 1.x autoresets on the next step by default; CleanRL was written
for gymnasium 0.29's same-step autoreset and ``infos["final_observation"]``, so the envs run in
SAME_STEP mode here and the final observation comes from ``infos["final_obs"]``.
Writes bench/results/cleanrl-dqn-<machine>-<date>-<time>.json (a new file).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import time

import numpy as np
import torch


def run(buffer: str, total_timesteps: int, seed: int = 1, learning_starts: int = 10_000) -> dict:
    import gymnasium as gym
    from torch import nn, optim
    torch.set_num_threads(1)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    envs = gym.vector.SyncVectorEnv([lambda: gym.wrappers.RecordEpisodeStatistics(gym.make("CartPole-v1"))],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    envs.single_action_space.seed(seed)
    device = torch.device("cpu")
    q = nn.Sequential(nn.Linear(4, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 2))
    target = nn.Sequential(nn.Linear(4, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 2))
    target.load_state_dict(q.state_dict())
    opt = optim.Adam(q.parameters(), lr=2.5e-4)
    if buffer == "sb3":
        from stable_baselines3.common.buffers import ReplayBuffer
    else:
        from gpu_replay.compat import SB3ReplayBuffer as ReplayBuffer
    rb = ReplayBuffer(10_000, envs.single_observation_space, envs.single_action_space, device,
                      handle_timeout_termination=False)
    t_add = t_sample = t_env = t_train = 0.0
    n_sample = 0
    returns = []
    obs, _ = envs.reset(seed=seed)
    t0 = time.perf_counter()
    for step in range(total_timesteps):
        eps = max(0.05, 1 - step / (0.5 * total_timesteps) * 0.95)
        if random.random() < eps:
            actions = np.array([envs.single_action_space.sample()])
        else:
            with torch.no_grad():
                actions = torch.argmax(q(torch.Tensor(obs).to(device)), dim=1).cpu().numpy()
        t = time.perf_counter()
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        t_env += time.perf_counter() - t
        fin = infos.get("final_info", {})  # (same-step autoreset: the ended episode's info)
        if "episode" in fin and fin["_episode"].any():
            returns.append(float(fin["episode"]["r"][0]))
        real_next_obs = next_obs.copy()
        for idx, trunc in enumerate(truncations):
            if trunc or terminations[idx]:
                real_next_obs[idx] = infos["final_obs"][idx]
        t = time.perf_counter()
        rb.add(obs, real_next_obs, actions, rewards, terminations, infos)
        t_add += time.perf_counter() - t
        obs = next_obs
        if step > learning_starts and step % 10 == 0:
            t = time.perf_counter()
            data = rb.sample(128)
            t_sample += time.perf_counter() - t
            n_sample += 1
            t = time.perf_counter()
            with torch.no_grad():
                target_max, _ = target(data.next_observations).max(dim=1)
                td_target = data.rewards.flatten() + 0.99 * target_max * (1 - data.dones.flatten())
            old_val = q(data.observations).gather(1, data.actions).squeeze()
            loss = nn.functional.mse_loss(td_target, old_val)
            opt.zero_grad()
            loss.backward()
            opt.step()
            t_train += time.perf_counter() - t
        if step % 500 == 0:
            target.load_state_dict(q.state_dict())
    wall = time.perf_counter() - t0
    envs.close()
    return {"buffer": buffer, "steps": total_timesteps, "wall_s": wall, "env_steps_per_s": total_timesteps / wall,
            "add_us": 1e6 * t_add / total_timesteps, "sample_us": 1e6 * t_sample / max(n_sample, 1),
            "buffer_share": (t_add + t_sample) / wall, "env_s": t_env, "train_s": t_train,
            "buffer_s": t_add + t_sample, "other_s": wall - t_env - t_train - t_add - t_sample, "episodes": len(returns),
            "mean_return_last_20": float(np.mean(returns[-20:])) if returns else None}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--total-timesteps", type=int, default=50_000)
    ap.add_argument("--learning-starts", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="pairs of runs, alternating which buffer goes first")
    ap.add_argument("--out-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)
    res = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "torch": torch.__version__, "runs": []}
    order = []
    for i in range(args.rounds):  # ABBA...: neither buffer always runs first (the machine drifts)
        order += ["sb3", "gpu_replay"] if i % 2 == 0 else ["gpu_replay", "sb3"]
    for buffer in order:
        r = run(buffer, args.total_timesteps, args.seed, min(args.learning_starts, args.total_timesteps // 2))
        res["runs"].append(r)
        print(json.dumps(r), flush=True)
    for b in ("sb3", "gpu_replay"):
        runs = [r for r in res["runs"] if r["buffer"] == b]
        res[f"{b}_median_wall_s"] = float(np.median([r["wall_s"] for r in runs]))
        res[f"{b}_median_buffer_s"] = float(np.median([r["buffer_s"] for r in runs]))
    res["ratio_gpu_replay_to_sb3"] = res["gpu_replay_median_wall_s"] / res["sb3_median_wall_s"]
    res["buffer_ratio_gpu_replay_to_sb3"] = res["gpu_replay_median_buffer_s"] / res["sb3_median_buffer_s"]
    os.makedirs(args.out_dir, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    path = os.path.join(args.out_dir, f"cleanrl-dqn-{platform.machine()}-{stamp}.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    print(f"gpu_replay / SB3 median wall time: {res['ratio_gpu_replay_to_sb3']:.3f}, time in the buffer: "
          f"{res['buffer_ratio_gpu_replay_to_sb3']:.3f}; wrote {path}")
    return res


if __name__ == "__main__":
    main()

"""Sharded prioritized replay over torch.distributed: every rank an actor and a DDP learner.

    torchrun --nproc_per_node=2 examples/distributed_per.py              # Gloo on CPU
    torchrun --nproc_per_node=4 examples/distributed_per.py --steps 300

With CUDA the same script runs on NCCL with one GPU per rank (``cuda:LOCAL_RANK``).

Each rank steps its own environments and adds their transitions to its shard (local, no
communication). Each learning step, every rank draws its own batch from the *union* of the
shards with exact global prioritization (one collective for the shard totals, one to move
the rows), computes IS-weighted TD errors on its DDP replica, and sends the new priorities
to the ranks that own the rows. The environment is a toy contextual bandit (reward =
obs[action] + noise, episodes of one step) so that the script needs torch alone.
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

from gpu_replay.distributed import ShardedPrioritizedReplayBuffer

OBS = 4
SPEC = {"obs": ((OBS,), torch.float32), "action": ((), torch.int64), "reward": ((), torch.float32)}


def run(rank: int, world_size: int, steps: int = 100, batch_size: int = 32, num_envs: int = 8,
        device: str | torch.device = "cpu", verbose: bool = False) -> dict:
    """The training loop; the process group is already initialized (torchrun or a test)."""
    device = torch.device(device)
    torch.manual_seed(1234)  # the same initial network on every rank (DDP checks it anyway)
    rb = ShardedPrioritizedReplayBuffer(10_000, SPEC, device=device, seed=0)  # same seed on every rank
    net = torch.nn.Linear(OBS, 2).to(device)
    model = torch.nn.parallel.DistributedDataParallel(net) if world_size > 1 else net
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    env_rng = torch.Generator().manual_seed(100 + rank)  # each rank's own actors
    sampled, losses = 0, []
    for step in range(steps):
        # act: epsilon-greedy on this rank's envs, store the transitions in this rank's shard
        obs = torch.randn(num_envs, OBS, generator=env_rng)
        with torch.no_grad():
            greedy = net(obs.to(device)).argmax(1).cpu()
        explore = torch.rand(num_envs, generator=env_rng) < 0.3
        action = torch.where(explore, torch.randint(0, 2, (num_envs,), generator=env_rng), greedy)
        reward = obs.gather(1, action[:, None]).squeeze(1) + 0.1 * torch.randn(num_envs, generator=env_rng)
        rb.add({"obs": obs, "action": action, "reward": reward})
        # learn: every rank its own batch from the global distribution (collective calls)
        batch = rb.sample(batch_size, beta=min(1.0, 0.4 + 0.6 * step / steps))
        q = model(batch["obs"]).gather(1, batch["action"][:, None]).squeeze(1)
        td = batch["reward"] - q
        loss = (batch.weights * td.pow(2)).mean()
        opt.zero_grad()
        loss.backward()  # DDP averages the gradients over the ranks
        opt.step()
        rb.update_priorities(batch.keys, td.detach())
        sampled += len(batch)
        losses.append(loss.item())
        if verbose and rank == 0 and (step % max(1, steps // 5) == 0 or step == steps - 1):
            print(f"step {step:4d}  loss {loss.item():.4f}  rows {rb.global_len()}  "
                  f"owners in this batch {torch.bincount(rb.owner_of(batch.keys), minlength=world_size).tolist()}",
                  flush=True)
        elif verbose and (step % max(1, steps // 5) == 0 or step == steps - 1):
            rb.global_len()  # (collective: every rank takes part)
    stats = rb.global_stats()
    return {"rows": rb.global_len(), "sampled": sampled, "first_loss": sum(losses[:10]) / 10,
            "last_loss": sum(losses[-10:]) / 10, "stale_dropped": stats["stale_dropped"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        rank, ws = dist.get_rank(), dist.get_world_size()
        out = run(rank, ws, args.steps, args.batch_size, device=f"cuda:{local_rank}" if cuda else "cpu",
                  verbose=True)
        if rank == 0:
            print(f"done: {ws} ranks, {out['rows']} rows over the shards, {out['sampled']} rows sampled per rank, "
                  f"loss {out['first_loss']:.4f} -> {out['last_loss']:.4f}", flush=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

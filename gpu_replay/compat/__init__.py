"""Drop-in adapters over the library's buffers for two existing replay-memory interfaces.

- ``PrioritizedReplayMemory`` (``compat/memory.py``): the ``push`` / ``sample(batch, beta)`` /
  ``update_priorities(indices, td_errors)`` memory API of many PER agents.
- ``SB3ReplayBuffer`` (``compat/sb3.py``): Stable-Baselines3's ``ReplayBuffer`` (and CleanRL's):
  swap the import.

Both are thin: storage, sampling, priorities and n-step returns are the library's; the
adapters translate call signatures, shapes and dtypes.
"""
from .memory import PrioritizedReplayMemory
from .sb3 import ReplayBufferSamples, SB3ReplayBuffer

__all__ = ["PrioritizedReplayMemory", "SB3ReplayBuffer", "ReplayBufferSamples"]

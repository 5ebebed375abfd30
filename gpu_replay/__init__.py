"""gpu_replay: device-resident prioritized experience replay with n-step returns for PyTorch."""
from ._tree import SumTree
from .buffers import Batch, PrioritizedReplayBuffer, ReplayBuffer, linear_beta
from .nstep import NStep

__all__ = ["ReplayBuffer", "PrioritizedReplayBuffer", "NStep", "SumTree", "Batch", "linear_beta"]
__version__ = "0.1.0"

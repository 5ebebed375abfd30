"""gpu_replay: device-resident prioritized experience replay with n-step returns for PyTorch.

``import gpu_replay`` needs torch alone; the Triton and numba backends load on first use.
"""
from .buffers import Batch, PrioritizedReplayBuffer, ReplayBuffer
from .nstep import NStep
from .sampler import linear_beta
from .sumtree import SumTree

__all__ = ["ReplayBuffer", "PrioritizedReplayBuffer", "NStep", "SumTree", "Batch", "linear_beta"]
__version__ = "0.2.0"

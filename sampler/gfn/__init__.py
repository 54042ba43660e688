"""GFlowNet samplers and their shared trajectory type."""

from sampler.gfn.diffusion import DiffusionGFN
from sampler.gfn.trajectories import Trajectories

__all__ = ["DiffusionGFN", "Trajectories"]

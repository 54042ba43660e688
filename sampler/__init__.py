"""sampler: a Hydra-configured experiment platform for amortised samplers (diffusion GFlowNets)."""

__version__ = "0.1.0"

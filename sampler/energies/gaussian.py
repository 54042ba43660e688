"""A diagonal Gaussian target N(μ, diag(s²)) — the analytic test bed of the sampler (exact log Z, samples)."""

from __future__ import annotations

import math

import torch

from sampler.energies.base import Energy


class DiagonalGaussian(Energy):
    """Unnormalised N(mean, diag(std²)) with a chosen log Z: log r(x) = log N(x; mean, std²) + log_Z.

    Args:
        dim: dimension.
        mean: scalar or list of length ``dim``.
        std: scalar or list of length ``dim``.
        log_Z: the (known) log-normaliser added to the normalised log-density.
    """

    t_scale = 1.0  # σ² of the reference process: N(0, I) itself at t = 1

    def __init__(
        self, dim: int = 2, mean: float | list[float] = 0.0, std: float | list[float] = 1.0, log_Z: float = 0.0
    ):
        super().__init__()
        self.dim = int(dim)
        self.register_buffer(
            "mean", torch.broadcast_to(torch.as_tensor(mean, dtype=torch.float32), (self.dim,)).clone()
        )
        self.register_buffer("std", torch.broadcast_to(torch.as_tensor(std, dtype=torch.float32), (self.dim,)).clone())
        self.log_Z = float(log_Z)
        half = float(4 * self.std.max() + self.mean.abs().max())
        self.plot_range = (-half, half)

    def log_reward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.std
        norm = torch.log(self.std).sum() + 0.5 * self.dim * math.log(2 * math.pi)
        return -0.5 * z.pow(2).sum(-1) - norm + self.log_Z

    def log_reward_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach()
        return self.log_reward(x), -(x - self.mean) / self.std.pow(2)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(n, self.dim, device=self.mean.device, generator=generator)
        return self.mean + self.std * eps

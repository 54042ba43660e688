"""Neal's funnel (docs/spec.md §1): x0 ~ N(0, s²), x1..x_{d-1} | x0 ~ N(0, e^{x0}).

The density is normalised (``log_Z = 0``) and has an exact sampler. ``Funnel`` (= ``HardFunnel``, s = 3) is the
benchmark of Sendera et al.; ``EasyFunnel`` (s = 1) is the one older papers used — numbers are not comparable.
"""

from __future__ import annotations

import math

import torch

from sampler.energies.base import Energy

_LOG_2PI = math.log(2 * math.pi)


class Funnel(Energy):
    """Normalised d-dimensional funnel.

    Args:
        dim: dimension d ≥ 2 (the paper: 10).
        x0_std: std s of the "neck" coordinate x0 (hard funnel: 3, easy funnel: 1).
    """

    log_Z = 0.0
    plot_range = (-10.0, 10.0)
    t_scale = 1.0  # σ² of Sendera et al.'s protocol

    def __init__(self, dim: int = 10, x0_std: float = 3.0) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"energy.dim must be at least 2 for the funnel (got {dim})")
        if x0_std <= 0:
            raise ValueError(f"x0_std must be positive (got {x0_std})")
        self.dim = int(dim)
        self.x0_std = float(x0_std)

    def _log_x0(self, x0: torch.Tensor) -> torch.Tensor:
        """log N(x0; 0, s²), any shape."""
        return -0.5 * (x0 / self.x0_std).pow(2) - math.log(self.x0_std) - 0.5 * _LOG_2PI

    def log_reward(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) = log N(x0; 0, s²) + Σ_{i≥1} log N(x_i; 0, e^{x0}), normalised.

        Args:
            x: points, shape ``[B, d]``.

        Returns:
            Log-density, shape ``[B]``.
        """
        x0, rest = x[:, 0], x[:, 1:]  # [B], [B, d-1]
        k = self.dim - 1
        cond = -0.5 * rest.pow(2).sum(1) * torch.exp(-x0) - 0.5 * k * x0 - 0.5 * k * _LOG_2PI
        return self._log_x0(x0) + cond

    def log_reward_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(x) and its closed-form gradient.

        ∂/∂x0 = -x0/s² + ½ e^{-x0} Σ_{i≥1} x_i² - (d-1)/2;  ∂/∂x_i = -x_i e^{-x0}.

        Args:
            x: points, shape ``[B, d]``.

        Returns:
            (log-density ``[B]``, gradient ``[B, d]``), both detached.
        """
        x = x.detach()
        x0, rest = x[:, 0], x[:, 1:]  # [B], [B, d-1]
        k = self.dim - 1
        inv_var = torch.exp(-x0)  # [B]
        sq = rest.pow(2).sum(1)  # [B]
        log_r = self._log_x0(x0) - 0.5 * sq * inv_var - 0.5 * k * x0 - 0.5 * k * _LOG_2PI
        grad = torch.empty_like(x)
        grad[:, 0] = -x0 / self.x0_std**2 + 0.5 * sq * inv_var - 0.5 * k
        grad[:, 1:] = -rest * inv_var.unsqueeze(1)
        return log_r, grad

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact samples: x0 first, then the other coordinates given x0.

        Args:
            n: number of samples.
            generator: random source (``None``: torch's default generator); must live on the energy's device.

        Returns:
            Samples, shape ``[n, d]``.
        """
        eps = torch.randn(n, self.dim, generator=generator, device=self.device)  # [n, d]
        x0 = self.x0_std * eps[:, :1]  # [n, 1]
        return torch.cat([x0, eps[:, 1:] * torch.exp(0.5 * x0)], dim=1)

    def marginal_log_density_2d(self, xy: torch.Tensor) -> torch.Tensor:
        """Exact normalised log-density of (x0, x1): log N(x0; 0, s²) + log N(x1; 0, e^{x0}).

        Args:
            xy: points, shape ``[N, 2]``.

        Returns:
            Log-density, shape ``[N]``.
        """
        x0, x1 = xy[:, 0], xy[:, 1]
        return self._log_x0(x0) - 0.5 * x1.pow(2) * torch.exp(-x0) - 0.5 * x0 - 0.5 * _LOG_2PI


HardFunnel = Funnel


class EasyFunnel(Funnel):
    """The funnel with x0 ~ N(0, 1) used by older papers."""

    def __init__(self, dim: int = 10, x0_std: float = 1.0) -> None:
        super().__init__(dim=dim, x0_std=x0_std)

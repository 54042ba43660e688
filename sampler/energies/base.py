"""The target-density protocol every energy implements (SPEC §1).

A target is an unnormalised density r(x) = exp(-E(x)) on R^d. Subclass :class:`Energy`, implement
``log_reward`` (and, where you can, ``sample`` and an analytic ``log_reward_and_grad``), then point the config at
it: ``python scripts/train.py energy._target_=my.module.MyEnergy``.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


class NonFiniteRewardError(RuntimeError):
    """Raised when an energy returns NaN/inf log-rewards where finite values are required."""


class Energy(nn.Module):
    """Base class of all continuous targets.

    Attributes (class or instance):
        dim: dimension d of the sample space.
        log_Z: the true log-partition function when known, else ``None``.
        plot_range: (low, high) of the square window used for 2-D plots of dims (0, 1).
        mode_centres: ``[M, d]`` tensor of mixture-mode centres, or ``None`` (enables mode coverage).
        mode_std: per-dimension std of each mode (mode-coverage radius is 3 of these).
    """

    dim: int = 2
    log_Z: float | None = None
    plot_range: tuple[float, float] = (-10.0, 10.0)
    mode_std: float | None = None

    @property
    def mode_centres(self) -> torch.Tensor | None:
        return None

    @property
    def name(self) -> str:
        return type(self).__name__

    # --- required -------------------------------------------------------------------------------------------
    def log_reward(self, x: torch.Tensor) -> torch.Tensor:
        """log r(x) for ``x`` of shape ``[B, d]``; returns ``[B]``."""
        raise NotImplementedError

    # --- optional, with generic defaults ---------------------------------------------------------------------
    def log_reward_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log r(x) ``[B]``, ∇ log r(x) ``[B, d]``), both detached.

        The default differentiates ``log_reward`` with autograd; it works when the caller is under
        ``torch.no_grad``. Energies with a closed-form gradient override it (it sits on the hot path of the
        Langevin parametrisation).
        """
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            lr = self.log_reward(x)
            (grad,) = torch.autograd.grad(lr.sum(), x)
        return lr.detach(), grad.detach()

    def grad_log_reward(self, x: torch.Tensor) -> torch.Tensor:
        """∇ log r(x), shape ``[B, d]`` (detached)."""
        return self.log_reward_and_grad(x)[1]

    @property
    def has_sampler(self) -> bool:
        return type(self).sample is not Energy.sample

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact samples ``[n, d]`` drawn with ``generator`` (on the energy's device)."""
        raise NotImplementedError(f"{self.name} has no exact sampler")

    def marginal_log_density_2d(self, xy: torch.Tensor) -> torch.Tensor | None:
        """Log of the (possibly unnormalised) marginal density of dims (0, 1) at ``xy [N, 2]``, for plots.

        ``None`` when not available; the default is the full density for 2-D targets.
        """
        if self.dim == 2:
            return self.log_reward(xy)
        return None

    @property
    def device(self) -> torch.device:
        for b in self.buffers():
            return b.device
        return torch.device("cpu")


def check_finite(log_reward: torch.Tensor, where: str) -> torch.Tensor:
    """Raise :class:`NonFiniteRewardError` naming ``where`` and the count of non-finite entries."""
    bad = ~torch.isfinite(log_reward)
    if bad.any():
        n = int(bad.sum())
        raise NonFiniteRewardError(f"non-finite log-reward at {where}: {n} of {log_reward.numel()} values")
    return log_reward

"""Many-well (docs/spec.md §1): d/2 independent 2-D double wells on the coordinate pairs (x_{2k}, x_{2k+1}).

For one pair (a, b): log r = -a⁴ + 6a² + 0.5a - 0.5b², i.e. an asymmetric double well in a (modes near ±1.7, the
right one ≈ 5.5× heavier) times an unnormalised standard Gaussian in b. The 2^{d/2} modes make it a mode-coverage
benchmark. log Z = (d/2)·(log Z_a + ½ log 2π) with Z_a = ∫ exp(-a⁴ + 6a² + 0.5a) da ≈ 11784.50927, computed here by
quadrature at import time; exact samples draw a by rejection sampling and b ~ N(0, 1).
"""

from __future__ import annotations

import math

import torch

from sampler.energies.base import Energy

_LOG_2PI = math.log(2 * math.pi)

# Rejection-sampling proposal for a: 0.2·N(-1.7, 0.5²) + 0.8·N(1.7, 0.5²).
_PROPOSAL_WEIGHTS = (0.2, 0.8)
_PROPOSAL_MEANS = (-1.7, 1.7)
_PROPOSAL_STD = 0.5


def _log_double_well(a: torch.Tensor) -> torch.Tensor:
    """Unnormalised log-density of one well coordinate: -a⁴ + 6a² + 0.5a (any shape)."""
    a2 = a * a
    return -a2 * a2 + 6.0 * a2 + 0.5 * a


def _log_proposal(a: torch.Tensor) -> torch.Tensor:
    """Normalised log-density of the two-Gaussian proposal for a (any shape)."""
    terms = [
        math.log(w) - 0.5 * ((a - m) / _PROPOSAL_STD) ** 2 - math.log(_PROPOSAL_STD) - 0.5 * _LOG_2PI
        for w, m in zip(_PROPOSAL_WEIGHTS, _PROPOSAL_MEANS, strict=True)
    ]
    return torch.logaddexp(terms[0], terms[1])


def double_well_quadrature_grid(n_points: int = 400_001, half_width: float = 10.0) -> torch.Tensor:
    """The float64 grid on [-half_width, half_width] for the 1-D quadratures (the density is < e^{-9000} at ±10)."""
    return torch.linspace(-half_width, half_width, n_points, dtype=torch.float64)


def double_well_normaliser(n_points: int = 400_001) -> float:
    """Z_a = ∫ exp(-a⁴ + 6a² + 0.5a) da by the trapezoidal rule in float64 (≈ 11784.50927).

    Args:
        n_points: grid size on [-10, 10]; the integrand is smooth and negligible at the ends, so the trapezoidal
            rule converges spectrally fast.

    Returns:
        The 1-D normalising constant.
    """
    a = double_well_quadrature_grid(n_points)
    return float(torch.trapezoid(torch.exp(_log_double_well(a)), a))


def _rejection_log_envelope(n_points: int = 400_001) -> float:
    """log M with exp(-a⁴ + 6a² + 0.5a) ≤ M·q(a) for all a (grid maximum plus a 0.1 % margin).

    The ratio vanishes in both tails (e^{-a⁴} against e^{-2a²}), so its supremum lies well inside [-10, 10].
    """
    a = double_well_quadrature_grid(n_points)
    return float((_log_double_well(a) - _log_proposal(a)).max()) + math.log(1.001)


DOUBLE_WELL_Z: float = double_well_normaliser()
DOUBLE_WELL_LOG_Z: float = math.log(DOUBLE_WELL_Z)
_LOG_ENVELOPE: float = _rejection_log_envelope()


def sample_double_well(
    n: int, generator: torch.Generator | None = None, device: torch.device | None = None
) -> torch.Tensor:
    """``n`` exact draws of a ∝ exp(-a⁴ + 6a² + 0.5a) by rejection sampling from the two-Gaussian proposal.

    Vectorised: each round draws a batch of proposals sized from the expected acceptance rate Z_a/M (≈ 0.39) and
    keeps the accepted ones; rounds repeat until ``n`` are accepted (typically one or two).

    Args:
        n: number of draws.
        generator: random source (``None``: torch's default generator), on ``device``.
        device: where to create the draws.

    Returns:
        Draws, shape ``[n]``.
    """
    accept_rate = math.exp(DOUBLE_WELL_LOG_Z - _LOG_ENVELOPE)  # Z_a / M
    kept: list[torch.Tensor] = [torch.empty(0, device=device)]
    n_kept = 0
    while n_kept < n:
        m = max(256, math.ceil(1.2 * (n - n_kept) / accept_rate))
        pick_left = torch.rand(m, generator=generator, device=device) < _PROPOSAL_WEIGHTS[0]  # [m]
        centre = torch.where(pick_left, _PROPOSAL_MEANS[0], _PROPOSAL_MEANS[1])  # [m]
        a = centre + _PROPOSAL_STD * torch.randn(m, generator=generator, device=device)  # [m]
        log_u = torch.log(torch.rand(m, generator=generator, device=device))  # [m]
        accepted = a[log_u < _log_double_well(a) - _log_proposal(a) - _LOG_ENVELOPE]
        kept.append(accepted)
        n_kept += accepted.numel()
    return torch.cat(kept)[:n]


class ManyWell(Energy):
    """The many-well target of Sendera et al. (d = 32: 2^16 modes).

    Args:
        dim: even dimension d ≥ 2; coordinates (x_{2k}, x_{2k+1}) form the k-th double-well pair.
    """

    plot_range = (-3.0, 3.0)
    t_scale = 1.0  # σ² of Sendera et al.'s protocol

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"energy.dim must be even for manywell (got {dim})")
        self.dim = int(dim)
        self.log_Z = 0.5 * self.dim * (DOUBLE_WELL_LOG_Z + 0.5 * _LOG_2PI)

    def log_reward(self, x: torch.Tensor) -> torch.Tensor:
        """log r(x) = Σ_k [-a_k⁴ + 6a_k² + 0.5a_k - 0.5b_k²] with a_k = x_{2k}, b_k = x_{2k+1} (unnormalised).

        Args:
            x: points, shape ``[B, d]``.

        Returns:
            Log-reward, shape ``[B]``.
        """
        a, b = x[:, 0::2], x[:, 1::2]  # [B, d/2] each
        return (_log_double_well(a) - 0.5 * b * b).sum(1)

    def log_reward_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log r(x) and its closed-form gradient: ∂/∂a = -4a³ + 12a + 0.5, ∂/∂b = -b.

        Args:
            x: points, shape ``[B, d]``.

        Returns:
            (log-reward ``[B]``, gradient ``[B, d]``), both detached.
        """
        x = x.detach()
        a, b = x[:, 0::2], x[:, 1::2]  # [B, d/2] each
        grad = torch.empty_like(x)
        ga, gb = grad[:, 0::2], grad[:, 1::2]
        torch.mul(a, a, out=ga)  # ∂/∂a = a·(12 − 4a²) + 0.5, built in place from a²
        log_r = _log_double_well(a).sub_(b * b, alpha=0.5).sum(1)
        ga.mul_(-4.0).add_(12.0).mul_(a).add_(0.5)
        torch.neg(b, out=gb)
        return log_r, grad

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact samples: every a_k by rejection sampling, every b_k ~ N(0, 1).

        Args:
            n: number of samples.
            generator: random source (``None``: torch's default generator); must live on the energy's device.

        Returns:
            Samples, shape ``[n, d]``.
        """
        k = self.dim // 2
        a = sample_double_well(n * k, generator=generator, device=self.device).view(n, k)  # [n, d/2]
        b = torch.randn(n, k, generator=generator, device=self.device)  # [n, d/2]
        return torch.stack([a, b], dim=2).reshape(n, self.dim)  # interleaved: x_{2k} = a_k, x_{2k+1} = b_k

    def marginal_log_density_2d(self, xy: torch.Tensor) -> torch.Tensor:
        """Normalised log-density of one double-well pair (x0, x1) = (a, b).

        Args:
            xy: points, shape ``[N, 2]``.

        Returns:
            Log-density, shape ``[N]``.
        """
        a, b = xy[:, 0], xy[:, 1]
        return _log_double_well(a) - 0.5 * b * b - DOUBLE_WELL_LOG_Z - 0.5 * _LOG_2PI

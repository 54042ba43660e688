"""Equal-weight isotropic Gaussian mixtures: the 9-, 25- and 40-mode 2-D benchmarks (docs/spec.md §1).

The density is normalised, so ``log_Z = 0``. ``log_reward_and_grad`` is closed-form (softmax responsibilities), and
``sample`` draws each sample's mode independently from a uniform categorical — not n/M per mode, the stratified
sampler of the reference code that biased its published W2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from sampler.energies.base import Energy, plot_limits


class GaussianMixture(Energy):
    """p(x) = (1/M) Σ_m N(x; μ_m, var·I), a normalised equal-weight isotropic mixture.

    Args:
        means: mode centres, shape ``[M, d]`` (anything ``torch.as_tensor`` accepts).
        var: the common scalar variance of every component.
        plot_range: the plotting window, ``(lo, hi)`` for both axes or ``((x_lo, x_hi), (y_lo, y_hi))``.
    """

    log_Z = 0.0

    def __init__(
        self,
        means: torch.Tensor | Sequence[Sequence[float]],
        var: float,
        plot_range: tuple[float, float] | tuple[tuple[float, float], tuple[float, float]] = (-10.0, 10.0),
    ) -> None:
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.get_default_dtype())
        if means.ndim != 2 or means.shape[0] < 1:
            raise ValueError(f"means must have shape [M, d] with M >= 1 (got {tuple(means.shape)})")
        if var <= 0:
            raise ValueError(f"var must be positive (got {var})")
        self.register_buffer("means", means.clone())  # [M, d]
        self.var = float(var)
        self.dim = int(means.shape[1])
        self.mode_std = math.sqrt(self.var)
        self.plot_range = plot_range
        x_limits, y_limits = plot_limits(self)  # validated, as floats
        self.plot_range = x_limits if x_limits == y_limits else (x_limits, y_limits)

    @property
    def n_modes(self) -> int:
        return int(self.means.shape[0])

    @property
    def mode_centres(self) -> torch.Tensor:
        """The means ``[M, d]`` (the mixture is equal-weight: ``mode_weights`` keeps its default 1/M each)."""
        return self.means

    def _component_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Per-component log N(x; μ_m, var·I), ``[B, M]``. The squared distances are summed one coordinate at a
        time for small d: the same sums as ``(μ − x)².sum(-1)``, without the ``[B, M, d]`` intermediate and its
        reduction over a tiny last dimension (6× faster on 30,000 × 25)."""
        mu = self.means.to(x.dtype)
        if self.dim <= 8:
            sq = (x[:, :1] - mu[:, 0]).square()
            for k in range(1, self.dim):
                sq = sq + (x[:, k : k + 1] - mu[:, k]).square()
        else:
            sq = (mu.unsqueeze(0) - x.unsqueeze(1)).pow(2).sum(-1)
        log_norm = -0.5 * self.dim * math.log(2 * math.pi * self.var)
        return log_norm - 0.5 * sq / self.var

    def log_reward(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x), normalised.

        Args:
            x: points, shape ``[B, d]``.

        Returns:
            Log-density, shape ``[B]``.
        """
        lse, _ = logsumexp_and_weights(self._component_log_probs(x))  # [B]
        return lse - math.log(self.n_modes)

    def log_reward_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(x) and ∇ log p(x) = Σ_m w_m(x) (μ_m − x) / var = (w·μ − x) / var, with w = softmax of the
        component log-densities.

        Args:
            x: points, shape ``[B, d]``.

        Returns:
            (log-density ``[B]``, gradient ``[B, d]``), both detached.
        """
        x = x.detach()
        lse, w = logsumexp_and_weights(self._component_log_probs(x))  # [B], [B, M] unnormalised
        grad = (w @ self.means.to(x.dtype) / w.sum(1, keepdim=True) - x) / self.var  # [B, d]
        return lse - math.log(self.n_modes), grad

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact samples: a uniform mode index per sample plus N(0, var·I) noise.

        Args:
            n: number of samples.
            generator: random source (``None``: torch's default generator); must live on the energy's device.

        Returns:
            Samples, shape ``[n, d]``.
        """
        idx = torch.randint(self.n_modes, (n,), generator=generator, device=self.device)  # [n]
        noise = torch.randn(n, self.dim, generator=generator, device=self.device, dtype=self.means.dtype)
        return self.means[idx] + self.mode_std * noise


def logsumexp_and_weights(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.logsumexp(a, 1)`` and the weights ``exp(a − max)`` ``[B, M]`` (softmax up to normalisation).

    Terms that underflow (below log of the smallest normal float, plus 1) are set to exactly 0 instead of passed to
    ``exp``: on x86 CPUs torch's vectorised exp takes a slow path for them (~15× slower), and mixtures far from
    most of their modes are nothing but such terms. The values are those of ``torch.logsumexp`` (an underflowed
    term adds nothing to a sum ≥ 1), ±inf rows included; differentiable.
    """
    m = a.detach().amax(1, keepdim=True).nan_to_num_(0.0, 0.0, 0.0)  # a row of ±inf/NaN: as torch does
    r = a - m
    low = math.log(torch.finfo(a.dtype).tiny) + 1.0  # e^low is a normal float: no slow path on the clamped ones
    w = torch.where(r < low, 0.0, torch.exp(r.clamp(min=low)))
    return m.squeeze(1) + w.sum(1).log(), w


def _grid_means(coords: Sequence[float]) -> torch.Tensor:
    """All pairs of ``coords`` as a ``[len², 2]`` tensor."""
    c = torch.tensor(coords, dtype=torch.get_default_dtype())
    return torch.cartesian_prod(c, c)


class GMM9(GaussianMixture):
    """9 modes on {-5, 0, 5}², variance 0.3."""

    t_scale = 5.0  # σ² of the protocol (as for the 25-mode mixture)

    def __init__(self, var: float = 0.3, plot_range: tuple[float, float] = (-8.0, 8.0)) -> None:
        super().__init__(_grid_means([-5.0, 0.0, 5.0]), var=var, plot_range=plot_range)


class GMM25(GaussianMixture):
    """25 modes on {-10, -5, 0, 5, 10}², variance 0.3 (the Sendera et al. 25GMM)."""

    t_scale = 5.0  # σ² of Sendera et al.'s protocol

    def __init__(self, var: float = 0.3, plot_range: tuple[float, float] = (-14.0, 14.0)) -> None:
        super().__init__(_grid_means([-10.0, -5.0, 0.0, 5.0, 10.0]), var=var, plot_range=plot_range)


# Drawn once with ``torch.manual_seed(0); torch.rand(40, 2) * 80 - 40`` and frozen here so runs are comparable.
GMM40_MEANS: list[list[float]] = [
    [-0.2995, 21.4577],
    [-32.9218, -29.4376],
    [-15.4062, 10.7263],
    [-0.7925, 31.7156],
    [-3.5498, 10.5845],
    [-12.0885, -7.8626],
    [-38.2139, -26.4913],
    [-16.4889, 1.4817],
    [15.8134, 24.0009],
    [-27.1176, -17.4185],
    [14.5287, 33.2155],
    [-8.2320, 29.9325],
    [-6.4473, 4.2326],
    [36.2190, -37.1068],
    [-25.1815, -10.1266],
    [-15.5920, 34.5600],
    [-25.9272, -18.4133],
    [-27.9456, -37.4624],
    [-23.3496, 34.3839],
    [17.8487, 19.3869],
    [2.1037, -20.5073],
    [6.7674, -37.3478],
    [-28.9026, -20.6212],
    [25.2375, 23.4529],
    [-17.7398, -1.4433],
    [25.5824, 39.7653],
    [15.8753, 5.4037],
    [26.8195, -23.5521],
    [7.4538, -31.0122],
    [-27.7234, -20.6633],
    [18.0989, 16.0864],
    [-23.6941, 12.0843],
    [21.9589, -5.0487],
    [1.5273, 9.2682],
    [24.8151, 38.4078],
    [-30.8249, -14.6588],
    [15.7204, 33.1420],
    [34.8083, 35.2943],
    [7.9606, -34.7833],
    [3.6797, -25.0242],
]


class GMM40(GaussianMixture):
    """40 modes at fixed uniform-random positions in [-40, 40]² (:data:`GMM40_MEANS`), unit variance."""

    t_scale = 5.0  # σ² (as for the 25-mode mixture)

    def __init__(self, var: float = 1.0, plot_range: tuple[float, float] = (-50.0, 50.0)) -> None:
        super().__init__(GMM40_MEANS, var=var, plot_range=plot_range)

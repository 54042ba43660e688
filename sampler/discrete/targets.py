"""Discrete targets on the hypergrid ``{0..H-1}^ndim``: the hypergrid of Bengio et al. 2021 and the deceptive grid of
Kim et al. 2025 (after GAFN, Pan et al. 2023).

Both rewards are products of per-coordinate band tests. The tests are evaluated in exact integer arithmetic on
``a = |2x − (H−1)|`` (so a coordinate exactly on a band edge is decided by the formula, not by float rounding) and
stored as one lookup table of H entries per band.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sampler.discrete.env import MAX_STATES, GridEnv, as_states, non_negative_finite, positive_finite


class HyperGrid(GridEnv):
    """Hypergrid (Bengio et al. 2021, https://arxiv.org/abs/2106.04399): with x̃ = |x/(H−1) − 0.5| per coordinate,

    ``R(x) = R0 + R1·Π_i 1[0.25 < x̃_i ≤ 0.5] + R2·Π_i 1[0.3 < x̃_i < 0.4]``.

    Trajectories start at the origin, move +1 on one coordinate at a time (not past H−1) and end with the stop action
    at any state. The modes are the states of maximal reward R0 + R1 + R2: 2^ndim blocks near the corners.

    Args:
        ndim: number of coordinates (≥ 1).
        height: H (≥ 2).
        R0: base reward (> 0; smaller is harder: the modes are further apart in probability).
        R1, R2: band rewards (≥ 0).
        exact: enumerate the states for the exact metrics (see :class:`~sampler.discrete.env.GridEnv`).
        max_states: the most states ``exact`` enumerates.
    """

    def __init__(
        self,
        ndim: int = 2,
        height: int = 16,
        R0: float = 1e-2,
        R1: float = 0.5,
        R2: float = 2.0,
        exact: bool = True,
        max_states: int = MAX_STATES,
    ):
        super().__init__(ndim, height, exact, max_states)
        self.R0 = positive_finite(R0, "energy.R0")
        self.R1 = non_negative_finite(R1, "energy.R1")
        self.R2 = non_negative_finite(R2, "energy.R2")
        a = self._coordinate_distance(torch.arange(self.height)[:, None])[:, 0]  # [H]
        D = 2 * (self.height - 1)  # x̃ = a / D
        self.register_buffer("outer_band", 4 * a > D, persistent=False)  # 0.25 < x̃ (x̃ ≤ 0.5 always)
        self.register_buffer("mode_band", (10 * a > 3 * D) & (10 * a < 4 * D), persistent=False)  # 0.3 < x̃ < 0.4
        self.validate()

    def log_reward(self, x: Tensor) -> Tensor:
        """log R(x) for states ``[..., ndim]``; returns ``[...]`` (float64)."""
        x = as_states(x)
        r1 = self.outer_band[x].all(-1).double()
        r2 = self.mode_band[x].all(-1).double()
        return torch.log(self.R0 + self.R1 * r1 + self.R2 * r2)

    def is_mode(self, x: Tensor) -> Tensor:
        x = as_states(x)
        if self.R2 > 0 and bool(self.mode_band.any()):
            return self.mode_band[x].all(-1)
        if self.R1 > 0 and bool(self.outer_band.any()):
            return self.outer_band[x].all(-1)
        return torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)

    @property
    def n_modes(self) -> int:
        for weight, band in ((self.R2, self.mode_band), (self.R1, self.outer_band)):
            if weight > 0 and bool(band.any()):
                return int(band.sum()) ** self.ndim
        return self.height**self.ndim


class DeceptiveGrid(GridEnv):
    """Deceptive grid (Kim et al. 2025, https://arxiv.org/abs/2410.01432, after GAFN): with x̃ = 2x/(H−1) − 1,

    ``R(x) = R0 + R1 − R1·Π_i 1[|x̃_i| > 0.2] + R2·Π_i 1[0.6 < |x̃_i| < 0.8]``.

    The centre (some |x̃_i| ≤ 0.2) carries the deceptive reward R0 + R1, the modes (every |x̃_i| in the band) R0 + R2.
    Reaching H−1 on any coordinate ends the trajectory at once (no stop action there); elsewhere the stop action ends
    it. So the terminal states are those with at most one coordinate at H−1, and a state on the edge has one parent
    (the move along the coordinate at H−1: its other parents would be edge states, which are terminal).

    Args:
        ndim: number of coordinates (≥ 1).
        height: H (≥ 2).
        R0: base reward (> 0).
        R1: the deceptive centre's extra reward (≥ 0).
        R2: the modes' extra reward (≥ 0).
        exact: enumerate the states for the exact metrics.
        max_states: the most states ``exact`` enumerates.
        float_thresholds: test the bands on x̃ computed in float64 as x/(H−1)·2 − 1, as the Adaptive Teachers code
            does, instead of exactly. The two differ only for a coordinate exactly on a band edge: at H = 16,
            x = 12 has |x̃| = 0.6 exactly, outside the open band, but 0.6000000000000001 in float64, so that code counts
            3 mode coordinates per axis ({2, 12, 13}; 81 modes at ndim = 4) where the formula has 2 ({2, 13}; 16 modes).
    """

    def __init__(
        self,
        ndim: int = 2,
        height: int = 64,
        R0: float = 1e-5,
        R1: float = 0.1,
        R2: float = 2.0,
        exact: bool = True,
        max_states: int = MAX_STATES,
        float_thresholds: bool = False,
    ):
        super().__init__(ndim, height, exact, max_states)
        self.max_steps = self.ndim * (self.height - 2) + 1
        self.R0 = positive_finite(R0, "energy.R0")
        self.R1 = non_negative_finite(R1, "energy.R1")
        self.R2 = non_negative_finite(R2, "energy.R2")
        self.float_thresholds = bool(float_thresholds)
        H1 = self.height - 1
        if self.float_thresholds:
            ax = (torch.arange(self.height, dtype=torch.float64) / H1 * 2 - 1).abs()
            outer, band = ax > 0.2, (ax > 0.6) & (ax < 0.8)
        else:
            a = self._coordinate_distance(torch.arange(self.height)[:, None])[:, 0]  # |x̃| = a / (H−1)
            outer, band = 5 * a > H1, (5 * a > 3 * H1) & (5 * a < 4 * H1)
        self.register_buffer("outer_band", outer, persistent=False)
        self.register_buffer("mode_band", band, persistent=False)
        self.validate()

    def log_reward(self, x: Tensor) -> Tensor:
        """log R(x) for states ``[..., ndim]``; returns ``[...]`` (float64)."""
        x = as_states(x)
        outer = self.outer_band[x].all(-1).double()
        band = self.mode_band[x].all(-1).double()
        return torch.log(self.R0 + self.R1 - self.R1 * outer + self.R2 * band)

    forced_termination = True

    def is_forced_terminal(self, s: Tensor) -> Tensor:
        return (as_states(s) == self.height - 1).any(-1)

    def backward_mask(self, s: Tensor) -> Tensor:
        s = as_states(s)
        edge = s == self.height - 1
        others_on_edge = edge.sum(-1, keepdim=True) - edge.long()  # edges among the other coordinates
        return (s > 0) & (others_on_edge == 0)

    def terminal_mask(self, states: Tensor) -> Tensor:
        return (as_states(states) == self.height - 1).sum(-1) < 2

    def is_mode(self, x: Tensor) -> Tensor:
        if self._band_modes():
            return self.mode_band[as_states(x)].all(-1)
        return super().is_mode(x)

    @property
    def n_modes(self) -> int | None:
        if self._band_modes():
            return int(self.mode_band.sum()) ** self.ndim
        return super().n_modes

    def _band_modes(self) -> bool:
        """The modes are the band states (the usual case: R2 > R1 and the band is not empty)."""
        return self.R2 > self.R1 and bool(self.mode_band.any())

"""Rank-prioritised replay (Tripp et al. 2020; SPEC §5, ``buffer=rank`` / ``buffer=per``).

Entry of rank ρ (ρ = 0 for the highest key, ties broken by insertion order, older first) gets weight
1 / (k·N + ρ) with N the current size; the paper uses k = 0.01.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sampler.buffers.base import ReplayBuffer


class RankBuffer(ReplayBuffer):
    """Replay buffer drawing entry of rank ρ with probability ∝ 1 / (k·N + ρ).

    Args:
        capacity, dim, eviction, device: as for :class:`ReplayBuffer`.
        k: rank offset factor (> 0); smaller k puts more mass on the top entries.
    """

    prioritised = True

    def __init__(
        self,
        capacity: int,
        dim: int,
        eviction: str = "fifo",
        device: str | torch.device = "cpu",
        k: float = 0.01,
    ):
        super().__init__(capacity, dim, eviction, device)
        if not k > 0 or k == float("inf"):
            raise ValueError(f"buffer.k must be a positive finite number (got {k})")
        self.k = float(k)

    def ranks(self) -> Tensor:
        """Rank of each stored entry, shape ``[len]`` (0 = highest key; equal keys: older entry first)."""
        order = self.best_first()  # [N] slots
        ranks = torch.empty_like(order)
        ranks[order] = torch.arange(self._size, device=order.device)
        return ranks

    def _compute_weights(self) -> Tensor:
        return 1.0 / (self.k * self._size + self.ranks().double())

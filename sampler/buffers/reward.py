"""Reward-prioritised replay: weight ∝ exp(β·key) (docs/spec.md §5, ``buffer=reward``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sampler.buffers.base import ReplayBuffer


class RewardBuffer(ReplayBuffer):
    """Replay buffer drawing entry i with probability ∝ exp(β·key_i), i.e. ∝ r(x)^β when keys are log-rewards.

    Args:
        capacity, dim, eviction, device: as for :class:`ReplayBuffer`.
        beta: inverse temperature β (0 gives uniform sampling).
    """

    prioritised = True

    def __init__(
        self,
        capacity: int,
        dim: int,
        eviction: str = "fifo",
        device: str | torch.device = "cpu",
        beta: float = 1.0,
    ):
        super().__init__(capacity, dim, eviction, device)
        if not math.isfinite(beta):
            raise ValueError(f"buffer.beta must be a finite number (got {beta})")
        self.beta = float(beta)

    def _compute_weights(self) -> Tensor:
        z = self.beta * self._key[: self._size].double()  # [N]
        return torch.exp(z - z.max()) if self._size else z  # largest weight is 1: no overflow for any key scale

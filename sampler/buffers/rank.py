"""Rank-prioritised replay (Tripp et al. 2020; docs/spec.md §5, ``buffer=rank``) and its teacher-reward-keyed
variant (``buffer=per``, docs/spec.md §7).

Entry of rank ρ (ρ = 0 for the highest key, ties broken by insertion order, older first) gets weight
1 / (k·N + ρ) with N the current size; the paper uses k = 0.01.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sampler.buffers.base import ReplayBuffer, best_first_order


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
        # Best-first slot order, kept up to date by merging new entries (O(N) per add instead of an O(N log N) sort
        # of up to 600k keys). Valid for the entries with id < _order_next_id; None: rebuild from scratch.
        self._order: Tensor | None = None
        self._order_next_id = 0

    def _sorted_order(self) -> Tensor:
        """Slots by key descending, equal keys oldest first, shape ``[len]``, updated incrementally."""
        if self._order is None or self.eviction != "fifo":
            order = self.best_first()
        else:
            old = self._order[self._id[self._order] < self._order_next_id]  # drop slots overwritten since
            new = torch.nonzero(self._id[: self._size] >= self._order_next_id).squeeze(1)
            new = new[best_first_order(self._key[new], self._id[new])]  # [m] best first
            # New entries are younger than every old one, so among equal keys they go after: right=True on -key.
            pos = torch.searchsorted(-self._key[old], -self._key[new], right=True)
            pos = pos + torch.arange(new.numel(), device=pos.device)
            is_new = torch.zeros(old.numel() + new.numel(), dtype=torch.bool, device=old.device)
            is_new[pos] = True
            order = torch.empty(old.numel() + new.numel(), dtype=old.dtype, device=old.device)
            order[is_new], order[~is_new] = new, old
        self._order, self._order_next_id = order, self._next_id
        return order

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._order = None

    def to(self, device) -> RankBuffer:
        super().to(device)
        self._order = None
        return self

    def ranks(self) -> Tensor:
        """Rank of each stored entry, shape ``[len]`` (0 = highest key; equal keys: older entry first)."""
        order = self._sorted_order()  # [N] slots
        ranks = torch.empty_like(order)
        ranks[order] = torch.arange(self._size, device=order.device)
        return ranks

    def _compute_weights(self) -> Tensor:
        return 1.0 / (self.k * self._size + self.ranks().double())


class PERBuffer(RankBuffer):
    """Prioritised experience replay as the Adaptive Teachers code runs it (``buffer=per``): a :class:`RankBuffer`
    whose forward-step entries are keyed by the teacher reward R_T of the student's TB error (large where the
    student is wrong), not by log r — with or without a teacher. The key needs the student's log Z or flow.

    Args:
        capacity, dim, eviction, device, k: as for :class:`RankBuffer`.
        drop_below_threshold: forward batches after the first store only the states whose log r reaches the
            teacher's log-reward threshold, as the Adaptive Teachers diffusion code's ``--per`` runs do (the first
            batch is stored whole there too, so the buffer never starts empty); ``False`` stores every state, those
            below the threshold with the smallest key, log(1 + ε_T). A teacher's proposals are filtered either way.
    """

    keyed_by = "teacher_reward"

    def __init__(
        self,
        capacity: int,
        dim: int,
        eviction: str = "fifo",
        device: str | torch.device = "cpu",
        k: float = 0.01,
        drop_below_threshold: bool = False,
    ):
        super().__init__(capacity, dim, eviction, device, k)
        if not isinstance(drop_below_threshold, bool):
            raise ValueError(f"buffer.drop_below_threshold must be true or false (got {drop_below_threshold!r})")
        self.drop_below_threshold = drop_below_threshold

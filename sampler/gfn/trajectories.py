"""The one trajectory type shared by every GFlowNet and every objective."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Trajectories:
    """A batch of complete trajectories s_0 → … → s_T, with the log-probabilities the objectives need.

    Continuous samplers fill every step; discrete samplers of variable length pad after termination and
    pass ``mask`` (True on real transitions). By convention the terminal column of ``log_flow`` holds the
    log-reward, so sub-trajectory objectives need no special case for the last state.

    Attributes:
        states: ``[B, T+1, D]`` visited states (s_0 first).
        log_pf: ``[B, T]`` log P_F(s_{i+1} | s_i) under the trained (unexplored) policy.
        log_pb: ``[B, T]`` log P_B(s_i | s_{i+1}).
        log_reward: ``[B]`` log r(x) of the terminal state.
        log_Z: ``[B]`` or scalar initial flow log F(s_0) (learned log Z, or the state flow at s_0), if any.
        log_flow: ``[B, T+1]`` state log-flows log F(s_i) with ``log_flow[:, last] = log_reward``, if any.
        mask: ``[B, T]`` bool, valid transitions; ``None`` means all valid.
        log_reward_states: ``[B, T+1]`` log r at every state, when it was computed (forward-looking flows).
    """

    states: torch.Tensor
    log_pf: torch.Tensor
    log_pb: torch.Tensor
    log_reward: torch.Tensor
    log_Z: torch.Tensor | None = None
    log_flow: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    log_reward_states: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.log_pf.shape[0]

    @property
    def n_steps(self) -> int:
        return self.log_pf.shape[1]

    @property
    def terminal_states(self) -> torch.Tensor:
        """``[B, D]`` the last real state of every trajectory."""
        if self.mask is None:
            return self.states[:, -1]
        last = self.mask.sum(1)  # [B] number of transitions = index of the terminal state
        return self.states[torch.arange(self.batch_size, device=last.device), last]

    def _masked(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.mask is None else x.masked_fill(~self.mask, 0.0)

    def sum_log_pf(self) -> torch.Tensor:
        """Σ_i log P_F over valid steps, ``[B]``."""
        return self._masked(self.log_pf).sum(1)

    def sum_log_pb(self) -> torch.Tensor:
        """Σ_i log P_B over valid steps, ``[B]``."""
        return self._masked(self.log_pb).sum(1)

    def log_weight(self) -> torch.Tensor:
        """Importance log-weight log r(x) + Σ log P_B − Σ log P_F, ``[B]``."""
        return self.log_reward + self.sum_log_pb() - self.sum_log_pf()

    def detach(self) -> Trajectories:
        return Trajectories(**{f.name: _detach(getattr(self, f.name)) for f in fields(self)})


def _detach(x):
    return x.detach() if isinstance(x, torch.Tensor) else x

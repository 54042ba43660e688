"""Balance objectives: trajectory balance, VarGrad, detailed balance, sub-trajectory balance (docs/spec.md §3).

Every function is pure: it reads a :class:`Trajectories` batch and returns a per-trajectory loss ``[B]``.
Padded steps of discrete trajectories (``traj.mask``) are ignored, so the same code serves the diffusion
sampler and grid GFlowNets.
"""

from __future__ import annotations

import math

import torch

from sampler.gfn.trajectories import Trajectories


def _require(x, what: str, loss: str):
    if x is None:
        raise ValueError(f"loss={loss} needs {what}, but the trajectories carry none (check model.flow)")
    return x


def trajectory_balance(traj: Trajectories) -> torch.Tensor:
    """TB (Malkin et al. 2022, https://arxiv.org/abs/2201.13259): ½ (log Z + Σ log P_F − Σ log P_B − log r)².

    Args:
        traj: trajectories with ``log_Z`` (scalar or ``[B]``).

    Returns:
        ``[B]`` per-trajectory loss.
    """
    log_Z = _require(traj.log_Z, "an initial flow log Z", "tb")
    delta = log_Z + traj.sum_log_pf() - traj.sum_log_pb() - traj.log_reward  # [B]
    return 0.5 * delta.pow(2)


def vargrad(traj: Trajectories) -> torch.Tensor:
    """VarGrad / log-variance loss (Richter et al. 2020; Zhang et al. 2023): TB with log Z replaced by the batch
    estimate −mean_b(Σ log P_F − Σ log P_B − log r), not detached: ½ (δ_b − mean δ)².

    Returns:
        ``[B]`` per-trajectory loss.
    """
    delta = traj.sum_log_pf() - traj.sum_log_pb() - traj.log_reward  # [B]
    return 0.5 * (delta - delta.mean()).pow(2)


def detailed_balance(traj: Trajectories) -> torch.Tensor:
    """DB (Bengio et al. 2023): Σ_i ½ (log F_i + log P_F,i − log P_B,i − log F_{i+1})² over valid steps.

    Returns:
        ``[B]`` per-trajectory loss.
    """
    _require(traj.log_flow, "state flows log F(s)", "db")
    F = _terminal_flows(traj)  # [B, T+1], the terminal state's flow is its log-reward
    res = traj._masked(F[:, :-1] + traj.log_pf - traj.log_pb - F[:, 1:])  # [B, T]; mask before squaring
    return 0.5 * res.pow(2).sum(1)


def _terminal_flows(traj: Trajectories) -> torch.Tensor:
    """``[B, T+1]`` log-flows with the terminal state's flow set to its log-reward (needed under a mask)."""
    F = traj.log_flow
    if traj.mask is None:
        return F
    last = traj.mask.sum(1)  # [B]
    return F.scatter(1, last[:, None], traj.log_reward[:, None])


def subtrajectory_balance(traj: Trajectories, lam: float = 2.0) -> torch.Tensor:
    """SubTB (Madan et al. 2023, https://arxiv.org/abs/2209.12782), vectorised over batch and all pairs i < j:
    Σ_{i<j} w_ij (log F_i − log F_j + Σ_{k=i}^{j−1} (log P_F,k − log P_B,k))², w_ij ∝ λ^{j−i}, Σ w = 1.

    With cumulative sums C_i = Σ_{k<i}(log P_F,k − log P_B,k) and A_i = log F_i − C_i, the residual of pair (i, j)
    is A_i − A_j, so the whole ``[B, T+1, T+1]`` residual matrix is one broadcast.

    Args:
        traj: trajectories with ``log_flow [B, T+1]`` (terminal column = log r).
        lam: λ > 0; λ > 1 favours long sub-trajectories.

    Returns:
        ``[B]`` per-trajectory loss (weights normalised over each trajectory's valid pairs).
    """
    F = _terminal_flows(_require_flow(traj))
    B, n = F.shape
    diff = traj._masked(traj.log_pf - traj.log_pb)  # [B, T]
    C = torch.cat([torch.zeros_like(diff[:, :1]), diff.cumsum(1)], 1)  # [B, T+1]
    A = F - C
    idx = torch.arange(n, device=F.device)
    span = (idx[None, :] - idx[:, None]).to(F.dtype)  # [T+1, T+1] j − i
    log_w = span * math.log(lam)
    valid = span > 0  # [T+1, T+1]
    if traj.mask is None:
        # Equal lengths: one weight matrix W for the batch, and Σ_ij W_ij (A_i − A_j)² is a quadratic form,
        # (A²)·(row sums + column sums) − 2 A·(W A), computed in float64 (the expansion cancels large terms).
        W = torch.softmax(log_w.masked_fill(~valid, float("-inf")).reshape(-1), 0).reshape(n, n).double()
        A64 = A.double()
        quad = A64.pow(2) @ (W.sum(1) + W.sum(0)) - 2 * (A64 * (A64 @ W.T)).sum(1)
        return quad.to(F.dtype)
    length = traj.mask.sum(1)  # [B] (masked trajectories of different lengths: weights per trajectory)
    valid = valid[None] & (idx[None, None, :] <= length[:, None, None])
    log_w = log_w[None].expand(B, n, n).masked_fill(~valid, float("-inf"))
    w = torch.softmax(log_w.reshape(B, -1), dim=1).reshape(B, n, n)  # Σ w = 1 per trajectory
    res = A[:, :, None] - A[:, None, :]  # [B, T+1, T+1], (i, j)
    return (w * res.masked_fill(~valid, 0.0).pow(2)).sum((1, 2))


def _require_flow(traj: Trajectories) -> Trajectories:
    _require(traj.log_flow, "state flows log F(s)", "subtb")
    return traj

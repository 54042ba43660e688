"""Objectives that are not balance conditions: the PIS KL objective and maximum likelihood (docs/spec.md §3)."""

from __future__ import annotations

import torch

from sampler.gfn.trajectories import Trajectories


def pis_kl(traj: Trajectories) -> torch.Tensor:
    """Path-integral-sampler objective (Zhang & Chen 2022, https://arxiv.org/abs/2111.15141): the reverse KL /
    negative ELBO per dimension, (1/d)(Σ log P_F − Σ log P_B − log r(s_T)).

    Needs reparameterised trajectories (gradients flow through the sampled states and log r).

    Returns:
        ``[B]`` per-trajectory loss.
    """
    d = traj.states.shape[-1]
    return (traj.sum_log_pf() - traj.sum_log_pb() - traj.log_reward) / d


def maximum_likelihood(traj: Trajectories) -> torch.Tensor:
    """MLE of the forward policy on backward trajectories from target samples (torchgfn ``MLEDiffusion``):
    −Σ log P_F.

    Returns:
        ``[B]`` per-trajectory loss.
    """
    return -traj.sum_log_pf()

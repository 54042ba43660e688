"""The adaptive teacher inside a training run (docs/spec.md §7; Kim et al. 2025, https://arxiv.org/abs/2410.01432).

The teacher is a second diffusion GFN (same architecture, no Langevin term) trained with TB, on the student's
terminal states of every step, towards the log-reward ``log R_T(x) + α·log r(x)``, where R_T grows with the
student's TB error at x. On ``teacher`` steps its samples enter the replay buffer keyed by R_T, so the student's
backward steps replay where it is wrong.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from sampler.gfn.trajectories import Trajectories
from sampler.losses import trajectory_balance
from sampler.teacher import student_delta, teacher_log_reward, teacher_reward


def build_teacher_gfn(cfg: DictConfig, energy, build_gfn) -> torch.nn.Module:
    """The teacher network: the student's model config with the Langevin term off."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model.update(langevin=False, langevin_per_dim=False, flow="scalar")
    return build_gfn(OmegaConf.create({"model": model}), energy)


class Teacher:
    """Teacher-side computations of one run; the teacher network and its optimiser belong to the module."""

    def __init__(self, cfg: DictConfig):
        t = cfg.teacher
        self.alpha, self.weight, self.eps = float(t.alpha), float(t.weight), float(t.eps)
        self.grad_clip = None if t.grad_clip is None else float(t.grad_clip)

    def reward(self, student_traj: Trajectories, threshold: float) -> torch.Tensor:
        """R_T ``[B]`` of the student's trajectories (detached)."""
        return teacher_reward(
            student_delta(student_traj).detach(),
            student_traj.log_reward.detach(),
            threshold,
            eps=self.eps,
            weight=self.weight,
        )

    @torch.no_grad()
    def propose(self, teacher_gfn, student_gfn, n: int, threshold: float, generator: torch.Generator):
        """``n`` teacher samples above the threshold and their R_T (from the student's backward trajectories)."""
        x = teacher_gfn.rollout_forward(n, generator=generator).terminal_states
        student_traj = student_gfn.rollout_backward(x, generator=generator)
        keep = student_traj.log_reward >= threshold
        return x[keep], self.reward(student_traj, threshold)[keep]

    def loss(
        self, teacher_gfn, x: torch.Tensor, r_t: torch.Tensor, log_r: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """The teacher's TB loss on backward trajectories from ``x`` towards log R_T + α log r."""
        target = teacher_log_reward(r_t, log_r, self.alpha)
        traj = teacher_gfn.rollout_backward(x, generator=generator, log_reward=target)
        return trajectory_balance(traj).mean()

"""The adaptive teacher (config group ``teacher``; Kim et al. 2025, "Adaptive Teachers for Amortized Samplers",
ICLR 2025, https://arxiv.org/abs/2410.01432).

A second GFlowNet, the *teacher*, is trained to sample where the *student* has a large trajectory-balance error;
its samples, and a buffer ranked by the teacher reward, feed the student's backward (off-policy) TB steps.

The module has three layers, each usable on its own:

- pure functions of tensors: the student residual δ (:func:`student_delta`), the teacher reward R_T
  (:func:`teacher_reward`), the teacher's training log-reward (:func:`teacher_log_reward`) and the reward threshold
  (:func:`initial_threshold`);
- :class:`TeacherSchedule`, the 50/25/25 forward / teacher / replay step schedule (a pure function of the step);
- :class:`AdaptiveTeacher`, the teacher network with its settings: what it proposes, its loss and its update.
  :class:`sampler.recipe.Recipe` wires it to the student, the replay buffer and the optimisers.

Sign convention (checked against the authors' code, ``alstn12088/adaptive-teacher``): we write
``δ = log F_0 + Σ log P_F − Σ log P_B − log r(x)``, the TB residual (TB loss = ½δ²). ``diffusion/gflownet_losses.py``
(``fwd_tb``/``bwd_tb``) computes ``discrepancy = log r + Σ log P_B − Σ log P_F − log F_0 = −δ`` and gives weight 20
where ``discrepancy > 0``, i.e. where δ < 0: the student puts less mass on x than the reward asks for
(under-sampling). ``grid/models/teacher.py`` (``get_teacher_reward``) uses the same ``discrepancy`` with weight
``1 + C·[discrepancy > 0]``, C = 19.

Two choices of that diffusion code are options (off by default; ``experiment=at_*`` turns them on):
``drop_below_threshold`` trains the teacher only on samples whose log r reaches the threshold (``train.py``,
``train_step_adv``), instead of on all of them with R_T = log(1 + ε_T) below it; ``grad_clip_params=time_embedding``
clips only the teacher's time embedding, the first parameter group of its optimiser there, instead of every
parameter. The replay side of the first is ``drop_below_threshold`` of :class:`sampler.buffers.PERBuffer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from sampler.gfn.trajectories import Trajectories
from sampler.losses import trajectory_balance

# ------------------------------------------------------------------------------------------------ pure functions


def student_delta(traj: Trajectories) -> torch.Tensor:
    """The student's TB residual δ = log F_0 + Σ log P_F − Σ log P_B − log r(x) per trajectory.

    δ < 0 means the student under-samples x (its forward path probability falls short of r(x)/Z); the TB loss of
    the trajectory is ½δ². Gradients flow through ``traj`` unchanged; :func:`teacher_reward` detaches.

    Args:
        traj: the student's trajectories (forward, or backward from teacher/buffer samples) with ``log_Z``
            scalar or ``[B]``; padded steps of discrete trajectories are masked out.

    Returns:
        ``[B]`` residuals δ.
    """
    if traj.log_Z is None:
        raise ValueError("the teacher needs the student's initial flow log Z, but the trajectories carry none")
    return traj.log_Z + traj.sum_log_pf() - traj.sum_log_pb() - traj.log_reward  # [B]


def teacher_reward(
    delta: torch.Tensor,
    log_reward: torch.Tensor,
    threshold: float | torch.Tensor | None,
    eps: float = 1e-3,
    weight: float = 20.0,
    below_threshold: float = 0.0,
    square: float = 0.5,
) -> torch.Tensor:
    """Teacher reward R_T(x) = log(1 + ε_T + w·c·δ²), w = ``weight`` where δ < 0, else 1; c = ``square``: ½ (the
    diffusion code's TB loss ½δ²), 1 on discrete targets (the grid code's log(1 + 1e-3 + δ²·(1 + 19·[under-sampled])),
    see :func:`square_coefficient`).

    Where ``log_reward < threshold`` (strictly) the term w·½δ² is replaced by ``below_threshold``, so samples
    in regions the target barely weighs carry no teacher reward (the reference replaces it by 1e-12). R_T is a
    reward, not a loss: the result is detached.

    Args:
        delta: ``[B]`` student residuals from :func:`student_delta`.
        log_reward: ``[B]`` log r(x) of the same samples.
        threshold: log-reward threshold (float, scalar or ``[B]`` tensor); ``None`` disables it.
        eps: ε_T > 0, so that R_T ≥ log(1 + ε_T) > 0 and log R_T is finite.
        weight: w for under-sampled x (δ < 0); over-sampled x get weight 1.
        below_threshold: the value that replaces w·c·δ² below the threshold (≥ 0, ≈ 0).
        square: c.

    Returns:
        ``[B]`` teacher rewards R_T > 0.
    """
    if eps <= 0:
        raise ValueError(f"teacher.eps must be > 0 so that log R_T is finite (got {eps})")
    if weight <= 0:
        raise ValueError(f"teacher.weight must be > 0 (got {weight})")
    if below_threshold < 0:
        raise ValueError(f"teacher.below_threshold must be >= 0 (got {below_threshold})")
    delta = delta.detach()
    w = torch.ones_like(delta).masked_fill(delta < 0, weight)  # [B]
    err = w * square * delta.pow(2)  # [B]
    if threshold is not None:
        below = log_reward.detach() < threshold  # [B]
        err = err.masked_fill(below, below_threshold)
    return torch.log1p(eps + err)


def square_coefficient(gfn) -> float:
    """c of :func:`teacher_reward` for a student ``gfn``: 1 on a discrete target (the Adaptive Teachers grid code),
    ½ otherwise (its diffusion code)."""
    return 1.0 if getattr(getattr(gfn, "energy", None), "discrete", False) else 0.5


def teacher_log_reward(r_t: torch.Tensor, log_reward: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """The teacher's training log-reward log R_T(x) + α·log r(x) ("mix"; α = 0 trains on R_T alone).

    Args:
        r_t: ``[B]`` teacher rewards from :func:`teacher_reward` (must be > 0).
        log_reward: ``[B]`` log r(x) of the same samples.
        alpha: weight α of the target's log-reward.

    Returns:
        ``[B]`` log-rewards for the teacher's TB loss.
    """
    return r_t.log() + alpha * log_reward


def initial_threshold(log_reward: torch.Tensor, quantile: float = 0.9) -> float:
    """The teacher's log-reward threshold: the ``quantile`` of log r over the initial student samples.

    The reference computes it once, before training, from one batch (500) of the untrained student's samples
    (``torch.quantile(log_r, 0.9)`` in ``diffusion/train.py``) and keeps it fixed.

    Args:
        log_reward: ``[N]`` log r of the initial student samples.
        quantile: in [0, 1].

    Returns:
        The threshold, a Python float.
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"teacher.quantile must be in [0, 1] (got {quantile})")
    log_reward = log_reward.detach().reshape(-1)
    if log_reward.numel() == 0:
        raise ValueError("initial_threshold needs at least one student sample (got none)")
    if torch.isnan(log_reward).any():
        raise ValueError("initial_threshold got NaN log-rewards; check the energy")
    return torch.quantile(log_reward.to(torch.float64), quantile).item()


# ------------------------------------------------------------------------------------------------------ schedule


class TeacherSchedule:
    """``phase(step) -> "forward" | "teacher" | "replay"``: the 50/25/25 schedule, period 4.

    - even steps, ``forward``: on-policy (or explored) student TB;
    - steps ≡ 1 (mod 4), ``teacher``: draw a batch of teacher samples, compute the student's δ on them, add them
      to the buffer keyed by R_T, then a student backward-TB step on a (rank-prioritised) buffer batch;
    - steps ≡ 3 (mod 4), ``replay``: a student backward-TB step on a buffer batch.

    This is the reference's ``it % 2 == 0`` / ``it % (2·adv_freq) == 1`` with ``adv_freq = 2``. (The reference
    also takes one teacher TB step after *every* student step, on that step's terminal states, and so does
    :class:`sampler.recipe.Recipe`.) A pure function of the step: nothing to checkpoint.
    """

    KINDS = ("forward", "teacher", "replay")

    def __call__(self, step: int) -> str:
        if step < 0:
            raise ValueError(f"step must be >= 0 (got {step})")
        if step % 2 == 0:
            return "forward"
        return "teacher" if step % 4 == 1 else "replay"


# ------------------------------------------------------------------------------------------------------- teacher


class AdaptiveTeacher:
    """The teacher network and its settings (``teacher=adaptive``).

    The teacher is a second diffusion GFN (the platform builds it with the student's architecture, without the
    Langevin term) trained with TB, on the student's terminal states of every step, towards the log-reward
    ``log R_T(x) + α·log r(x)``, where R_T grows with the student's TB error at x. Its samples above the
    threshold enter the replay buffer keyed by R_T, so that the student's backward steps replay where it is wrong.

    Args:
        gfn: the teacher network (``rollout_forward``, ``rollout_backward``, ``policy_parameters``, ...).
        alpha: α, the weight of log r in the teacher's log-reward.
        weight: R_T weight w where the student under-samples (δ < 0).
        eps: ε_T in R_T = log(1 + ε_T + w·½δ²).
        lr_multiplier: the teacher's policy learning rate is this × the student's (see :meth:`param_groups`).
        grad_clip: max gradient norm of a teacher update, or ``None``.
        quantile: the log-reward threshold is this quantile of log r over the untrained student's samples.
        drop_below_threshold: train the teacher only on the student samples whose log r reaches the threshold, as
            the Adaptive Teachers diffusion code does; ``False`` trains on all of them, those below the threshold
            with R_T = log(1 + ε_T).
        grad_clip_params: the parameters whose joint gradient norm ``grad_clip`` bounds: ``all`` of the teacher's,
            or only its policy's ``time_embedding`` (time features and time network), the first of the parameter
            groups the Adaptive Teachers diffusion code builds (its ``t_model``) and the only one it clips.
    """

    #: ``grad_clip_params`` choices.
    GRAD_CLIP_PARAMS = ("all", "time_embedding")

    def __init__(
        self,
        gfn: torch.nn.Module,
        alpha: float = 0.5,
        weight: float = 20.0,
        eps: float = 1e-3,
        lr_multiplier: float = 5.0,
        grad_clip: float | None = 0.1,
        quantile: float = 0.9,
        drop_below_threshold: bool = False,
        grad_clip_params: str = "all",
    ):
        for key, value in (("weight", weight), ("eps", eps), ("lr_multiplier", lr_multiplier)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"teacher.{key} must be a positive finite number (got {value!r})")
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"teacher.quantile must be in [0, 1] (got {quantile})")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"teacher.grad_clip must be a positive number or null (got {grad_clip})")
        if not isinstance(drop_below_threshold, bool):
            raise ValueError(f"teacher.drop_below_threshold must be true or false (got {drop_below_threshold!r})")
        if grad_clip_params not in self.GRAD_CLIP_PARAMS:
            raise ValueError(
                f"teacher.grad_clip_params must be one of {', '.join(self.GRAD_CLIP_PARAMS)} (got {grad_clip_params!r})"
            )
        self.gfn = gfn
        self.alpha, self.weight, self.eps = float(alpha), float(weight), float(eps)
        self.lr_multiplier = float(lr_multiplier)
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.quantile = float(quantile)
        self.drop_below_threshold = drop_below_threshold
        self.grad_clip_params = grad_clip_params
        if grad_clip_params == "time_embedding":
            _time_embedding_parameters(gfn)  # fails here, at build time, for a policy without one

    def param_groups(self, lr_policy: float, lr_flow: float) -> list[dict]:
        """Adam parameter groups of the teacher: policy and P_B corrections at ``lr_multiplier × lr_policy``, its
        log Z at ``lr_flow``."""
        lr = lr_policy * self.lr_multiplier
        return [
            {"params": self.gfn.policy_parameters(), "lr": lr, "name": "teacher_policy"},
            {"params": self.gfn.flow_parameters(), "lr": lr_flow, "name": "teacher_flow"},
            {"params": self.gfn.backward_parameters(), "lr": lr, "name": "teacher_backward"},
        ]

    def reward(self, student_traj: Trajectories, threshold: float) -> torch.Tensor:
        """R_T ``[B]`` of the student's trajectories (detached)."""
        return teacher_reward(
            student_delta(student_traj).detach(),
            student_traj.log_reward.detach(),
            threshold,
            eps=self.eps,
            weight=self.weight,
            square=square_coefficient(self.gfn),
        )

    @torch.no_grad()
    def propose(self, student_gfn, n: int, threshold: float, generator: torch.Generator):
        """``n`` teacher samples, of which those whose log r reaches the threshold are returned with their R_T.

        Returns:
            (states ``[m, d]``, R_T ``[m]``), m ≤ n, R_T from the student's backward trajectories to the states.
        """
        x = self.gfn.rollout_forward(n, generator=generator).terminal_states
        student_traj = student_gfn.rollout_backward(x, generator=generator)
        keep = student_traj.log_reward >= threshold
        return x[keep], self.reward(student_traj, threshold)[keep]

    def loss(self, x: torch.Tensor, r_t: torch.Tensor, log_r: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The teacher's mean TB loss on backward trajectories from ``x`` ``[B, d]`` towards log R_T + α log r."""
        target = teacher_log_reward(r_t, log_r, self.alpha)
        traj = self.gfn.rollout_backward(x, generator=generator, log_reward=target)
        return trajectory_balance(traj).mean()

    def update(
        self,
        student_traj: Trajectories,
        threshold: float,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        backward: Callable[[torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """One teacher TB step on the terminal states of a student step.

        With ``drop_below_threshold`` the states whose log r is below ``threshold`` are left out; when none is
        left, nothing is updated and the reported loss is 0.

        Args:
            student_traj: the student's trajectories of this step (detached here).
            threshold: the log-reward threshold of R_T.
            optimizer: the teacher's optimiser (over :meth:`param_groups`).
            generator: source of the backward-trajectory noise.
            backward: how to back-propagate the loss (default ``loss.backward()``).

        Returns:
            The teacher's loss (detached scalar).

        Raises:
            FloatingPointError: a non-finite teacher loss (nothing is updated).
        """
        r_t = self.reward(student_traj.detach(), threshold)
        x, log_r = student_traj.terminal_states.detach(), student_traj.log_reward.detach()
        if self.drop_below_threshold:
            keep = log_r >= threshold  # [B], the complement of teacher_reward's "below"
            if not bool(keep.any()):
                return torch.zeros((), dtype=r_t.dtype, device=r_t.device)
            x, r_t, log_r = x[keep], r_t[keep], log_r[keep]
        loss = self.loss(x, r_t, log_r, generator)
        if not torch.isfinite(loss):
            raise FloatingPointError("non-finite teacher loss")
        optimizer.zero_grad(set_to_none=True)
        (backward or torch.Tensor.backward)(loss)
        if self.grad_clip is not None:
            scoped = self.grad_clip_params == "time_embedding"
            params = _time_embedding_parameters(self.gfn) if scoped else self.gfn.parameters()
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        optimizer.step()
        return loss.detach()


def _time_embedding_parameters(gfn: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters of the time embedding of ``gfn``'s policy (time features and time network), for
    ``grad_clip_params="time_embedding"``; ValueError when the policy has none (a discrete GFN, a custom policy)."""
    policy = getattr(gfn, "policy", None)
    parts = [getattr(policy, name, None) for name in ("time_features", "time_net")]
    if not all(isinstance(part, torch.nn.Module) for part in parts):
        raise ValueError(
            "teacher.grad_clip_params=time_embedding needs a teacher policy with a time embedding "
            f"(policy.time_features, policy.time_net; {type(gfn).__name__} has none); use teacher.grad_clip_params=all"
        )
    return [p for part in parts for p in part.parameters()]

"""A training recipe from plain objects: one call of :meth:`Recipe.step` is one optimisation step of the paper's
methods (phase → trajectories → loss → update), with the off-policy machinery they combine.

Everything here is built from numbers and objects — a GFN, a loss function, an exploration schedule, a replay
buffer, a local search, an adaptive teacher — never from a config, and needs neither Lightning nor Hydra; the
platform's ``SamplerModule`` builds the same objects from the config and calls :meth:`Recipe.step`. For example,
TB + exploration + local search (Sendera et al. 2024, https://arxiv.org/abs/2402.05098)::

    recipe = Recipe(gfn, trajectory_balance, exploration=LinearDecay(0.1, 5000), phases="both_ways",
                    replay=RankBuffer(600_000, dim), local_search=MALA(), backward_source="local_search")
    opt = torch.optim.Adam(param_groups(gfn, lr_policy=1e-3, lr_flow=1e-1))
    for step in range(25_000):
        stats = recipe.step(step, opt, generator=gen)

All sampling noise comes from the ``generator`` passed to :meth:`Recipe.step`; the recipe's own state (buffers,
the local search's step size, the PER threshold, phase counts) is in :meth:`Recipe.state_dict`, so that a run
restored from both is bit-identical to an uninterrupted one on CPU.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from functools import partial

import torch

from sampler.adaptive_teacher import (
    AdaptiveTeacher,
    TeacherSchedule,
    initial_threshold,
    square_coefficient,
    student_delta,
    teacher_reward,
)
from sampler.buffers import RankBuffer, ReplayBuffer
from sampler.energies.base import NonFiniteRewardError
from sampler.gfn.trajectories import Trajectories
from sampler.local_search import LocalSearch
from sampler.losses import LOSSES, get_loss

log = logging.getLogger(__name__)

PHASES = ("forward", "backward", "both_ways")
BACKWARD_SOURCES = ("exact", "buffer", "local_search")
THRESHOLD_SAMPLES = 500  # student samples whose quantile of log r is the PER/teacher threshold (docs/spec.md §7)


class NonFiniteLossError(FloatingPointError):
    """A loss that is NaN/inf: never trained on."""


def param_groups(gfn, lr_policy: float = 1e-3, lr_flow: float = 1e-1, lr_back: float = 1e-3) -> list[dict]:
    """Optimiser parameter groups of a GFN: the policy (and Langevin scale), the flow (log Z or the state-flow
    network) and, when it has them, the learned P_B corrections, each at its own learning rate.

    Args:
        gfn: a GFN with ``policy_parameters()``, ``flow_parameters()`` and ``backward_parameters()``.
        lr_policy, lr_flow, lr_back: learning rates of the three groups.

    Returns:
        Groups for ``torch.optim.Adam(...)``, named ``policy``, ``flow`` (and ``backward``).

    Raises:
        RuntimeError: when the groups do not cover every parameter of ``gfn`` (one would never be trained).
    """
    groups = [
        {"params": gfn.policy_parameters(), "lr": lr_policy, "name": "policy"},
        {"params": gfn.flow_parameters(), "lr": lr_flow, "name": "flow"},
    ]
    if gfn.backward_parameters():
        groups.append({"params": gfn.backward_parameters(), "lr": lr_back, "name": "backward"})
    n_grouped = sum(len(g["params"]) for g in groups)
    n_all = len(list(gfn.parameters()))
    if n_grouped != n_all:
        raise RuntimeError(f"parameter groups cover {n_grouped} of {n_all} GFN parameters")
    return groups


class PhaseSchedule:
    """``phase(step) -> "forward" | "backward"`` for ``kind`` in ``forward | backward | both_ways`` (docs/spec.md §3).

    ``forward``: on-policy or explored rollouts; ``backward``: Brownian-bridge trajectories from target terminal
    states (exact samples, the replay buffer or the local-search buffer); ``both_ways``: even steps forward, odd
    steps backward. A pure function of the step: nothing to checkpoint.
    """

    KINDS = PHASES

    def __init__(self, kind: str = "forward"):
        if kind not in self.KINDS:
            raise ValueError(f"train.phases must be one of {', '.join(self.KINDS)} (got {kind})")
        self.kind = kind

    def __call__(self, step: int) -> str:
        if self.kind == "both_ways":
            return "forward" if step % 2 == 0 else "backward"
        return self.kind


class OffPolicy:
    """Where backward steps take their terminal states, and what forward steps store (docs/spec.md §5–§7).

    Args:
        replay: the replay buffer forward steps fill (keyed by log r, or by R_T when ``replay.keyed_by ==
            "teacher_reward"``), or ``None``.
        local_search: refines replay samples into its own rank buffer, or ``None``.
        source: ``exact`` (``energy.sample``), ``buffer`` (the replay buffer) or ``local_search`` (its buffer).
        batch_size: training batch size (local-search starting points unless the search sets its own).
        dim: state dimension (of the local-search buffer).
        quantile: the R_T threshold is this quantile of log r over 500 samples of the untrained student.
        store_forward: ``"always"``, or ``"first"`` (only the first forward batch seeds the buffer: teacher runs).

    All state is tensors (buffers, the local search's adapted state, the threshold): :meth:`state_dict`.
    """

    def __init__(
        self,
        replay: ReplayBuffer | None = None,
        local_search: LocalSearch | None = None,
        source: str = "exact",
        batch_size: int = 300,
        dim: int | None = None,
        quantile: float = 0.9,
        store_forward: str = "always",
    ):
        if source not in BACKWARD_SOURCES:
            raise ValueError(f"backward_source must be one of {', '.join(BACKWARD_SOURCES)} (got {source!r})")
        if store_forward not in ("always", "first"):
            raise ValueError(f"store_forward must be 'always' or 'first' (got {store_forward!r})")
        self.buffer = replay
        self.local_search = local_search
        self.ls_buffer: RankBuffer | None = None
        if local_search is not None:
            if dim is None:
                dim = replay.dim if replay is not None else None
            if dim is None:
                raise ValueError("a local search needs the state dimension (dim=...) for its buffer")
            self.ls_buffer = RankBuffer(local_search.capacity, dim, k=local_search.k)
        self.source = source
        self.batch_size = int(batch_size)
        self.quantile = float(quantile)
        self.store_forward = store_forward
        self.threshold: torch.Tensor | None = None  # PER/teacher key threshold, set when first needed
        self.stored_batches = 0

    @property
    def mala(self) -> LocalSearch | None:
        """The local search (the name earlier versions gave it)."""
        return self.local_search

    def ensure_threshold(self, gfn, generator: torch.Generator) -> float:
        """The log-reward threshold of R_T: the quantile of log r over 500 samples of ``gfn``, drawn at the first
        call and then kept (docs/spec.md §7)."""
        if self.threshold is None:
            with torch.no_grad():
                probe = gfn.rollout_forward(THRESHOLD_SAMPLES, generator=generator)
            self.threshold = torch.tensor(initial_threshold(probe.log_reward, self.quantile), dtype=torch.float64)
        return float(self.threshold)

    # ------------------------------------------------------------------------------------------------- filling
    def store(self, traj: Trajectories, gfn, generator: torch.Generator) -> None:
        """Add a forward batch's terminal states to the buffer, keyed by log r (or by R_T, see ``replay``).

        A buffer keyed by R_T with ``drop_below_threshold`` stores, from the second batch on, only the states whose
        log r reaches the threshold (:class:`sampler.buffers.PERBuffer`)."""
        if self.buffer is None or (self.store_forward == "first" and self.stored_batches > 0):
            return
        x = traj.terminal_states.detach()
        if self.buffer.keyed_by == "teacher_reward":
            threshold = self.ensure_threshold(gfn, generator)
            delta, log_r = student_delta(traj).detach(), traj.log_reward.detach()
            key = teacher_reward(delta, log_r, threshold, square=square_coefficient(gfn))
            if getattr(self.buffer, "drop_below_threshold", False) and self.stored_batches > 0:
                keep = log_r >= threshold  # [B], the complement of teacher_reward's "below"
                x, key = x[keep], key[keep]
        else:
            key = traj.log_reward.detach()
        self.buffer.add(x, key)
        self.stored_batches += 1

    # ---------------------------------------------------------------------------------------------- backward
    def check_source(self) -> None:
        """Raise ValueError unless the objects the backward source draws from are there."""
        if self.source in ("buffer", "local_search") and self.buffer is None:
            raise ValueError(f"backward_source={self.source} needs a replay buffer (replay=...)")
        if self.source == "local_search" and self.local_search is None:
            raise ValueError("backward_source=local_search needs a local search (local_search=MALA(...))")

    def terminals(self, n: int, step: int, energy, generator: torch.Generator) -> torch.Tensor:
        """``n`` terminal states ``[n, d]`` for a backward step at ``step``, from the configured source."""
        if self.source == "exact":
            return energy.sample(n, generator=generator)
        self.check_source()
        if self.buffer is None or len(self.buffer) == 0:
            raise RuntimeError(
                f"train.backward_source={self.source} at step {step}: the replay buffer is empty "
                "(backward steps need a forward step first; use train.phases=both_ways)"
            )
        if self.source == "buffer":
            return self.buffer.sample(n, generator)[0]
        search = self.local_search
        if len(self.ls_buffer) == 0 or step % search.every < 2:
            start, _ = self.buffer.sample(search.batch_size or self.batch_size, generator)
            x, log_r = search.run(start, energy, generator)
            if len(x):
                self.ls_buffer.add(x, log_r)
            if len(self.ls_buffer) == 0:
                what = f" (η={search.step_size:.3g})" if hasattr(search, "step_size") else ""
                raise RuntimeError(f"local search at step {step} accepted no proposal{what}")
        return self.ls_buffer.sample(n, generator)[0]

    # ------------------------------------------------------------------------------------------------- state
    def to(self, device) -> OffPolicy:
        """Move the buffers to ``device``; returns ``self``."""
        for buf in (self.buffer, self.ls_buffer):
            if buf is not None:
                buf.to(device)
        return self

    def stats(self) -> dict[str, float]:
        """``buffer_size`` (``buffer_ess``), the local search's numbers as ``ls_*`` and ``ls_buffer_size``."""
        out: dict[str, float] = {}
        if self.buffer is not None:
            s = self.buffer.stats()
            out["buffer_size"] = s["size"]
            if "ess" in s:
                out["buffer_ess"] = s["ess"]
        if self.local_search is not None:
            out.update({f"ls_{k}": v for k, v in self.local_search.stats().items()})
            out["ls_buffer_size"] = float(len(self.ls_buffer))
        return out

    def state_dict(self) -> dict:
        """Tensors only; the local search's state is saved under ``mala``, as checkpoints always held it."""
        state: dict = {}
        if self.buffer is not None:
            state["buffer"] = self.buffer.state_dict()
        if self.local_search is not None:
            state["mala"] = self.local_search.state_dict()
            state["ls_buffer"] = self.ls_buffer.state_dict()
        if self.threshold is not None:
            state["threshold"] = self.threshold
        state["stored_batches"] = torch.tensor(self.stored_batches)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (parts this configuration has no object for are ignored)."""
        if self.buffer is not None and "buffer" in state:
            self.buffer.load_state_dict(state["buffer"])
        if self.local_search is not None and "mala" in state:
            self.local_search.load_state_dict(state["mala"])
            self.ls_buffer.load_state_dict(state["ls_buffer"])
        self.threshold = state.get("threshold")
        self.stored_batches = int(state.get("stored_batches", torch.tensor(0)))


def _loss_fn(loss: str | Callable) -> tuple[Callable[[Trajectories], torch.Tensor], str | None]:
    """``(function, registry name or None)`` of a loss given by name (``"tb"``) or as a function."""
    if isinstance(loss, str):
        return get_loss(loss), loss
    fn = loss.func if isinstance(loss, partial) else loss
    name = next((n for n, spec in LOSSES.items() if spec.fn is fn), None)
    return loss, name


class Recipe:
    """One training step of a diffusion GFN sampler, composed from plain objects.

    Args:
        gfn: the sampler (``rollout_forward``, ``rollout_backward``, ``parameters()``, ``log_Z``, ``energy``).
        loss: the objective of forward steps: a function ``Trajectories -> [B]`` (``trajectory_balance``, ...) or
            its name (``"tb"``; ``sampler.losses.LOSSES``).
        exploration: ``ε(step) -> float | None``, the extra noise std of forward rollouts (``sampler.exploration``),
            or ``None`` for on-policy rollouts.
        phases: ``"forward"``, ``"backward"``, ``"both_ways"`` or a function ``step -> phase``; with a teacher,
            ``None`` (the default) means its 50/25/25 :class:`~sampler.adaptive_teacher.TeacherSchedule`.
        backward_loss: the objective of backward steps (default: ``loss``).
        replay: the replay buffer forward steps fill (``sampler.buffers``), or ``None``.
        local_search: refines replay samples for backward steps (``sampler.local_search.MALA``), or ``None``.
        backward_source: where backward steps take terminal states: ``exact`` (``energy.sample``), ``buffer``
            (``replay``) or ``local_search`` (the local search's buffer).
        teacher: an :class:`~sampler.adaptive_teacher.AdaptiveTeacher` (needs a ``replay`` buffer and
            ``backward_source="buffer"``), or ``None``.
        batch_size: trajectories per step.
        grad_clip: max global gradient norm of the GFN's update, or ``None``.
        energy: the target (default ``gfn.energy``).
        reparam: sample forward trajectories with the gradient through the states (PIS); ``None``: as the
            loss's registry entry says (``False`` for a function that is not in it).
        warm_start_log_Z: at step 0, set log Z to the importance-weighted estimate of the untrained policy.
        threshold_quantile: the quantile of the PER/teacher threshold when there is no teacher (a teacher's own
            ``quantile`` wins).
        intrinsic: an intrinsic reward trained with the sampler (:class:`~sampler.discrete.GAFN`: ``augment(traj)``
            before the forward loss, ``loss(traj)`` added to it; its ``param_groups`` go in the optimiser), or
            ``None``.
        observers: objects told every forward batch, after the update (``observe(traj)``): a mode tracker, say.
    """

    def __init__(
        self,
        gfn,
        loss: str | Callable[[Trajectories], torch.Tensor],
        *,
        exploration: Callable[[int], float | None] | None = None,
        phases: str | Callable[[int], str] | None = None,
        backward_loss: str | Callable[[Trajectories], torch.Tensor] | None = None,
        replay: ReplayBuffer | None = None,
        local_search: LocalSearch | None = None,
        backward_source: str = "exact",
        teacher: AdaptiveTeacher | None = None,
        batch_size: int = 300,
        grad_clip: float | None = None,
        energy=None,
        reparam: bool | None = None,
        warm_start_log_Z: bool = False,
        threshold_quantile: float = 0.9,
        intrinsic=None,
        observers: tuple = (),
    ):
        self.gfn = gfn
        self.intrinsic = intrinsic
        self.observers = tuple(observers)
        self.energy = energy if energy is not None else gfn.energy
        self.forward_loss, name = _loss_fn(loss)
        self.backward_loss = self.forward_loss if backward_loss is None else _loss_fn(backward_loss)[0]
        self.reparam = bool(LOSSES[name].reparam if name is not None else False) if reparam is None else bool(reparam)
        self.exploration = exploration if exploration is not None else (lambda step: None)
        if teacher is not None:
            if isinstance(phases, str) and phases != "forward":
                raise ValueError(f"a teacher runs its own forward/teacher/replay schedule; leave phases (got {phases})")
            if backward_source != "buffer" or replay is None:
                raise ValueError(
                    "a teacher fills the replay buffer its backward steps read: pass replay=... and "
                    "backward_source='buffer'"
                )
            self.phases = phases if callable(phases) else TeacherSchedule()
        else:
            self.phases = phases if callable(phases) else PhaseSchedule(phases or "forward")
        self.teacher = teacher
        self.batch_size = int(batch_size)
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.warm_start_log_Z = bool(warm_start_log_Z)
        self.offpolicy = OffPolicy(
            replay,
            local_search,
            backward_source,
            self.batch_size,
            dim=self.energy.dim,
            quantile=teacher.quantile if teacher is not None else threshold_quantile,
            store_forward="first" if teacher is not None else "always",
        )
        if teacher is not None or self.phases(1) == "backward" or self.phases(0) == "backward":
            self.offpolicy.check_source()
        self.phase_counts: dict[str, int] = {}  # steps per phase kind so far
        self.last_losses: dict[str, torch.Tensor] = {}  # latest loss per phase kind (logged side by side)

    # ------------------------------------------------------------------------------------------------ batches
    def trajectories(self, phase: str, step: int, generator: torch.Generator) -> Trajectories:
        """A training batch for ``phase`` (``forward``: explored rollouts; ``backward``: bridges from targets)."""
        if phase == "forward":
            eps = self.exploration(step)
            return self.gfn.rollout_forward(
                self.batch_size, exploration_std=eps, generator=generator, reparam=self.reparam
            )
        with torch.no_grad():
            x = self.offpolicy.terminals(self.batch_size, step, self.energy, generator)
        return self.gfn.rollout_backward(x, generator=generator)

    @torch.no_grad()
    def _warm_start_log_Z(self, generator: torch.Generator) -> None:
        """Start log Z at the importance-weighted estimate of the untrained policy's first batch instead of 0 — on
        many-well (log Z ≈ 165) an lr-0.1 log Z from 0 is still far off after 1000 steps."""
        if self.gfn.log_Z is None:
            return
        log_w = self.gfn.rollout_forward(self.batch_size, generator=generator).log_weight().double()
        # log mean w, written out: sampler.evaluation's log_mean_exp would import SciPy, POT and matplotlib here
        estimate = torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])
        if torch.isfinite(estimate):
            self.gfn.log_Z.fill_(float(estimate))
            log.info("log Z warm start: %.4g", float(estimate))

    # --------------------------------------------------------------------------------------------------- step
    def step(
        self,
        step: int,
        optimizer: torch.optim.Optimizer,
        teacher_optimizer: torch.optim.Optimizer | None = None,
        *,
        generator: torch.Generator,
        backward: Callable[[torch.Tensor], None] | None = None,
    ) -> dict[str, torch.Tensor | float | str]:
        """One optimisation step at ``step``: phase → trajectories → loss → update (and the teacher's update).

        Args:
            step: the step number (0, 1, ...): it picks the phase, ε and when the local search runs.
            optimizer: the GFN's optimiser (see :func:`param_groups`).
            teacher_optimizer: the teacher's optimiser (``teacher.param_groups(...)``) when there is a teacher.
            generator: the source of all sampling noise.
            backward: how to back-propagate a loss (default ``loss.backward()``).

        Returns:
            Stats: ``loss`` (detached), ``phase``, ``eps``, ``share_<phase>`` of the steps so far, the latest
            ``loss_<phase>`` of every phase once there are several, ``teacher_loss``, ``log_Z``, ``grad_norm``.

        Raises:
            NonFiniteRewardError, NonFiniteLossError: a NaN/inf log-reward or loss (nothing is updated).
        """
        backward = backward or torch.Tensor.backward
        kind = self.phases(step)
        phase = "forward" if kind == "forward" else "backward"
        gen = generator
        teacher = self.teacher
        if teacher is not None:
            if teacher_optimizer is None:
                raise ValueError("a recipe with a teacher needs teacher_optimizer=...")
            threshold = self.offpolicy.ensure_threshold(self.gfn, gen)
            if kind == "teacher":
                x, key = teacher.propose(self.gfn, self.batch_size, threshold, gen)
                if len(x):
                    self.offpolicy.buffer.add(x, key)
        if step == 0 and self.warm_start_log_Z:
            self._warm_start_log_Z(gen)
        traj = self.trajectories(phase, step, gen)
        n_bad = int((~torch.isfinite(traj.log_reward)).sum())
        if n_bad:
            raise NonFiniteRewardError(
                f"non-finite log-reward at step {step} ({phase} phase): {n_bad} of {traj.batch_size} trajectories"
            )
        loss_fn = self.forward_loss if phase == "forward" else self.backward_loss
        intrinsic_loss = None
        if self.intrinsic is not None and phase == "forward":
            per_sample = loss_fn(self.intrinsic.augment(traj))  # [B] the objective on the augmented rewards
            intrinsic_loss = self.intrinsic.loss(traj)
        else:
            per_sample = loss_fn(traj)  # [B]
        loss = per_sample.mean() if intrinsic_loss is None else per_sample.mean() + intrinsic_loss
        if not torch.isfinite(loss):
            n_bad = int((~torch.isfinite(per_sample)).sum())
            raise NonFiniteLossError(
                f"non-finite loss at step {step} ({phase} phase): {n_bad} of {per_sample.numel()} per-trajectory losses"
            )
        optimizer.zero_grad(set_to_none=True)
        backward(loss)
        grad_norm = None
        if self.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.gfn.parameters(), self.grad_clip)
        optimizer.step()
        if phase == "forward":
            with torch.no_grad():
                self.offpolicy.store(traj, self.gfn, gen)
                for observer in self.observers:
                    observer.observe(traj)
        teacher_loss = None
        if teacher is not None:
            try:
                teacher_loss = teacher.update(traj, float(self.offpolicy.threshold), teacher_optimizer, gen, backward)
            except FloatingPointError as err:
                raise NonFiniteLossError(str(err)) from err
        eps = self.exploration(step) if phase == "forward" else None
        self.phase_counts[kind] = self.phase_counts.get(kind, 0) + 1
        total = sum(self.phase_counts.values())
        stats: dict[str, torch.Tensor | float | str] = {"loss": loss.detach(), "phase": kind, "eps": float(eps or 0.0)}
        stats.update({f"share_{k}": v / total for k, v in self.phase_counts.items()})
        self.last_losses[kind] = loss.detach()
        if len(self.last_losses) > 1:  # a logged row shows one phase's loss; keep the others' latest beside it
            stats.update({f"loss_{k}": v for k, v in self.last_losses.items()})
        if teacher_loss is not None:
            stats["teacher_loss"] = teacher_loss
        if traj.log_Z is not None:
            stats["log_Z"] = traj.log_Z.detach().float().mean()
        if grad_norm is not None:
            stats["grad_norm"] = grad_norm.detach()
        if intrinsic_loss is not None:
            stats["intrinsic_loss"] = intrinsic_loss.detach()
        return stats

    # ------------------------------------------------------------------------------------------------- state
    def to(self, device) -> Recipe:
        """Move the buffers to ``device`` (the networks move with their module); returns ``self``."""
        self.offpolicy.to(device)
        return self

    def stats(self) -> dict[str, float]:
        """The buffers' and the local search's numbers (sizes, ESS, acceptance rate, step size)."""
        return self.offpolicy.stats()

    def state_dict(self) -> dict:
        """``{"offpolicy", "phase_counts", "last_losses"}``, tensors only (``torch.load(weights_only=True)``)."""
        return {
            "offpolicy": self.offpolicy.state_dict(),
            "phase_counts": {k: torch.tensor(v) for k, v in self.phase_counts.items()},
            "last_losses": dict(self.last_losses),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (missing parts start empty, as in a checkpoint of an on-policy run)."""
        self.offpolicy.load_state_dict(state.get("offpolicy", {}))
        self.phase_counts = {k: int(v) for k, v in state.get("phase_counts", {}).items()}
        self.last_losses = dict(state.get("last_losses", {}))

"""The LightningModule that trains a GFlowNet sampler: phase → trajectories → loss → optimise (docs/design.md).

All sampling noise comes from the module's own ``torch.Generator``, whose state is saved in the checkpoint
with the step counter, so a resumed run is bit-identical to an uninterrupted one on CPU. So is the energy's count
of log-reward evaluations made by training steps (``n_energy_calls``, the budget recent papers compare samplers at).
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from sampler.energies.base import Energy, NonFiniteRewardError, counting_energy_calls
from sampler.energies.protocol import check_energy
from sampler.evaluation.metrics import log_mean_exp
from sampler.gfn.trajectories import Trajectories
from sampler.losses import LOSSES, get_loss
from sampler.teacher import TeacherSchedule
from sampler.training.config_check import ConfigError, loss_name, root_cause
from sampler.training.offpolicy import OffPolicy
from sampler.training.phases import PhaseSchedule
from sampler.training.teaching import Teacher, build_teacher_gfn

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A loss that is NaN/inf: never trained on."""


def build_energy(cfg: DictConfig) -> Energy:
    """Instantiate ``cfg.energy`` and check it implements the protocol (docs/spec.md §1)."""
    target = cfg.energy.get("_target_")
    try:
        energy = instantiate(cfg.energy)
    except InstantiationException as err:
        raise ConfigError(f"energy._target_={target} could not be built: {root_cause(err)}") from err
    for attr in ("dim", "log_reward"):
        if not hasattr(energy, attr):
            raise ConfigError(f"energy._target_={target} is not an energy: it has no `{attr}` (see README, energies)")
    if not isinstance(energy, torch.nn.Module):
        raise ConfigError(f"energy._target_={target} must be a torch.nn.Module (subclass sampler.energies.Energy)")
    check_energy(energy, target)
    return energy


def build_gfn(cfg: DictConfig, energy: Energy) -> torch.nn.Module:
    """Instantiate ``cfg.model`` for ``energy``."""
    log_Z_init = cfg.model.get("log_Z_init", 0.0)
    if isinstance(log_Z_init, str) and log_Z_init != "auto":
        raise ConfigError(f"model.log_Z_init must be a number or auto (got {log_Z_init})")
    try:
        if log_Z_init == "auto":
            return instantiate(cfg.model, energy=energy, log_Z_init=0.0)
        return instantiate(cfg.model, energy=energy)
    except InstantiationException as err:
        raise ConfigError(f"model could not be built: {root_cause(err)}") from err


class SamplerModule(L.LightningModule):
    """Trains ``gfn`` to sample ``energy`` with the objective and phase schedule of ``cfg``.

    Args:
        cfg: the composed run config (``model``, ``energy``, ``loss``, ``exploration``, ``train``, ``seed``).
    """

    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.automatic_optimization = False
        self.cfg = cfg
        self.energy = build_energy(cfg)
        self.gfn = build_gfn(cfg, self.energy)
        self.exploration = instantiate(cfg.exploration)  # checked by check_config
        self.teaching = Teacher(cfg) if cfg.teacher.name == "adaptive" else None
        self.teacher_gfn = build_teacher_gfn(cfg, self.energy, build_gfn) if self.teaching else None
        self.phases = TeacherSchedule() if self.teaching else PhaseSchedule(cfg.train.phases)
        self.forward_loss_name = loss_name(cfg.loss.name)
        self.backward_loss_name = loss_name(cfg.train.backward_loss)
        self.forward_loss = get_loss(self.forward_loss_name, cfg.loss.lam)
        self.backward_loss = get_loss(self.backward_loss_name, cfg.loss.lam)
        self.reparam = LOSSES[self.forward_loss_name].reparam
        self.seed = int(cfg.seed)
        # read once: an OmegaConf lookup costs tens of µs, and these sit on the per-step path
        self.batch_size = int(cfg.train.batch_size)
        self.grad_clip = None if cfg.train.grad_clip is None else float(cfg.train.grad_clip)
        self.warm_start_log_Z = cfg.model.get("log_Z_init") == "auto"
        self.generator: torch.Generator | None = None
        self._pending_generator_state: torch.Tensor | None = None
        self.stats: dict[str, torch.Tensor | float | str] = {}
        self.phase_counts: dict[str, int] = {}  # steps per phase kind so far (saved in checkpoints)
        self.last_losses: dict[str, torch.Tensor] = {}  # latest loss per phase kind (logged side by side)
        self.offpolicy = OffPolicy(cfg, self.energy.dim, store_forward="first" if self.teaching else "always")
        uses_exact = not self.teaching and cfg.train.phases != "forward" and cfg.train.backward_source == "exact"
        if uses_exact and not getattr(self.energy, "has_sampler", False):
            raise ConfigError(
                f"train.backward_source=exact needs exact samples, but {type(self.energy).__name__} has no sample(); "
                "use train.backward_source=buffer or local_search, or train.phases=forward"
            )

    # Lightning sets _current_fx_name on every hook call (~30 times a step) and train_step replaces stats every step:
    # plain values, so they skip nn.Module.__setattr__'s parameter/buffer/sub-module bookkeeping.
    _PLAIN_ATTRS = frozenset({"_current_fx_name", "stats"})

    def __setattr__(self, name, value):
        if name in SamplerModule._PLAIN_ATTRS:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # ----------------------------------------------------------------------------------------------- random state
    def _ensure_generator(self) -> torch.Generator:
        if self.generator is None or self.generator.device != self.device:
            self.generator = torch.Generator(device=self.device).manual_seed(self.seed)
            if self._pending_generator_state is not None:
                self.generator.set_state(self._pending_generator_state)
                self._pending_generator_state = None
        return self.generator

    def on_fit_start(self) -> None:
        self._ensure_generator()
        self.offpolicy.to(self.device)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["sampler_state"] = {
            "generator": self._ensure_generator().get_state(),
            "seed": self.seed,
            "offpolicy": self.offpolicy.state_dict(),
            "phase_counts": {k: torch.tensor(v) for k, v in self.phase_counts.items()},
            "last_losses": dict(self.last_losses),
            "n_energy_calls": torch.tensor(self.n_energy_calls, dtype=torch.int64),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("sampler_state")
        if state is None:
            raise ConfigError("checkpoint has no sampler_state: it was not written by sampler")
        self.generator = None
        self._pending_generator_state = state["generator"]
        self.offpolicy.load_state_dict(state.get("offpolicy", {}))
        self.phase_counts = {k: int(v) for k, v in state.get("phase_counts", {}).items()}
        self.last_losses = dict(state.get("last_losses", {}))
        if isinstance(self.energy, Energy):
            if "n_energy_calls" not in state:
                log.warning("checkpoint has no n_energy_calls (written before they were counted): counting from 0")
            self.energy.n_energy_calls = int(state.get("n_energy_calls", 0))

    @property
    def n_energy_calls(self) -> int:
        """Log-reward evaluations (points) made by training so far: rollouts (terminal log r and, with the Langevin
        parametrisation, ∇log r at every step), local search, teacher, the log Z warm start — not evaluation."""
        return int(getattr(self.energy, "n_energy_calls", 0))

    # ------------------------------------------------------------------------------------------------ optimisers
    def configure_optimizers(self):
        t = self.cfg.train
        groups = [
            {"params": self.gfn.policy_parameters(), "lr": t.lr_policy, "name": "policy"},
            {"params": self.gfn.flow_parameters(), "lr": t.lr_flow, "name": "flow"},
        ]
        if self.gfn.backward_parameters():
            groups.append({"params": self.gfn.backward_parameters(), "lr": t.lr_back, "name": "backward"})
        n_grouped = sum(len(g["params"]) for g in groups)
        n_all = len(list(self.gfn.parameters()))
        if n_grouped != n_all:
            raise RuntimeError(f"parameter groups cover {n_grouped} of {n_all} GFN parameters")
        opt = torch.optim.Adam(groups, weight_decay=t.weight_decay)
        opts = [opt]
        if self.teacher_gfn is not None:
            lr = t.lr_policy * self.cfg.teacher.lr_multiplier
            opts.append(
                torch.optim.Adam(
                    [
                        {"params": self.teacher_gfn.policy_parameters(), "lr": lr, "name": "teacher_policy"},
                        {"params": self.teacher_gfn.flow_parameters(), "lr": t.lr_flow, "name": "teacher_flow"},
                        {"params": self.teacher_gfn.backward_parameters(), "lr": lr, "name": "teacher_backward"},
                    ]
                )
            )
        if len(t.lr_milestones) == 0:
            return opts
        scheds = [
            torch.optim.lr_scheduler.MultiStepLR(o, milestones=list(t.lr_milestones), gamma=t.lr_gamma) for o in opts
        ]
        return opts, [{"scheduler": s, "interval": "step"} for s in scheds]

    # --------------------------------------------------------------------------------------------------- training
    def trajectories(self, phase: str, step: int) -> Trajectories:
        """A training batch for ``phase`` (``forward``: explored rollouts; ``backward``: bridges from targets)."""
        gen = self._ensure_generator()
        B = self.batch_size
        if phase == "forward":
            eps = self.exploration(step)
            return self.gfn.rollout_forward(B, exploration_std=eps, generator=gen, reparam=self.reparam)
        with torch.no_grad():
            x = self.offpolicy.terminals(B, step, self.energy, gen)
        return self.gfn.rollout_backward(x, generator=gen)

    @torch.no_grad()
    def _warm_start_log_Z(self, gen: torch.Generator) -> None:
        """``model.log_Z_init=auto``: start log Z at the importance-weighted estimate of the untrained policy's first
        batch instead of 0 — on many-well (log Z ≈ 165) an lr-0.1 log Z from 0 is still far off after 1000 steps."""
        if self.gfn.log_Z is None:
            return
        log_w = self.gfn.rollout_forward(self.batch_size, generator=gen).log_weight().double()
        estimate = log_mean_exp(log_w)
        if torch.isfinite(estimate):
            self.gfn.log_Z.fill_(float(estimate))
            log.info("log Z warm start: %.4g", float(estimate))

    def _teacher_step(self, student_traj: Trajectories, opt, gen: torch.Generator) -> torch.Tensor:
        """One teacher TB step on this step's student terminal states (as the reference does every step)."""
        threshold = float(self.offpolicy.threshold)
        r_t = self.teaching.reward(student_traj.detach(), threshold)
        loss = self.teaching.loss(
            self.teacher_gfn, student_traj.terminal_states.detach(), r_t, student_traj.log_reward.detach(), gen
        )
        if not torch.isfinite(loss):
            raise NonFiniteLossError("non-finite teacher loss")
        opt.zero_grad(set_to_none=True)
        self._backward(loss)
        if self.teaching.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.teacher_gfn.parameters(), self.teaching.grad_clip)
        opt.step()
        return loss.detach()

    def training_step(self, batch, batch_idx):
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        # The teacher's raw optimiser: a LightningOptimizer step would count as a training step (global_step).
        loss = self.train_step(self.global_step, opts[0], opts[1].optimizer if len(opts) > 1 else None)
        scheds = self.lr_schedulers()
        for sched in scheds if isinstance(scheds, list) else [scheds] if scheds is not None else []:
            sched.step()
        return loss  # the progress bar shows self.stats["loss"] (callbacks.LossProgressBar)

    def train_step(self, step: int, opt, teacher_opt=None) -> torch.Tensor:
        """One optimisation step at ``step`` (phase → trajectories → loss → update), with the given optimisers.

        ``training_step`` calls it under Lightning; benchmarks and custom loops may call it directly. The energy's
        log-reward evaluations during the step are counted (``stats["n_energy_calls"]``, the running total).
        """
        with counting_energy_calls(self.energy):
            loss = self._train_step(step, opt, teacher_opt)
        if isinstance(self.energy, Energy):
            self.stats["n_energy_calls"] = float(self.energy.n_energy_calls)
        return loss

    def _train_step(self, step: int, opt, teacher_opt=None) -> torch.Tensor:
        kind = self.phases(step)
        phase = "forward" if kind == "forward" else "backward"
        gen = self._ensure_generator()
        if self.teaching is not None:
            threshold = self.offpolicy.ensure_threshold(self.gfn, gen)
            if kind == "teacher":
                x, key = self.teaching.propose(self.teacher_gfn, self.gfn, self.batch_size, threshold, gen)
                if len(x):
                    self.offpolicy.buffer.add(x, key)
        if step == 0 and self.warm_start_log_Z:
            self._warm_start_log_Z(gen)
        traj = self.trajectories(phase, step)
        n_bad = int((~torch.isfinite(traj.log_reward)).sum())
        if n_bad:
            raise NonFiniteRewardError(
                f"non-finite log-reward at step {step} ({phase} phase): {n_bad} of {traj.batch_size} trajectories"
            )
        loss_fn = self.forward_loss if phase == "forward" else self.backward_loss
        per_sample = loss_fn(traj)  # [B]
        loss = per_sample.mean()
        if not torch.isfinite(loss):
            n_bad = int((~torch.isfinite(per_sample)).sum())
            raise NonFiniteLossError(
                f"non-finite loss at step {step} ({phase} phase): {n_bad} of {per_sample.numel()} per-trajectory losses"
            )
        opt.zero_grad(set_to_none=True)
        self._backward(loss)
        grad_norm = None
        if self.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.gfn.parameters(), self.grad_clip)
        opt.step()
        if phase == "forward":
            with torch.no_grad():
                self.offpolicy.store(traj, self.gfn, gen)
        teacher_loss = self._teacher_step(traj, teacher_opt, gen) if self.teaching is not None else None
        eps = self.exploration(step) if phase == "forward" else None
        self.phase_counts[kind] = self.phase_counts.get(kind, 0) + 1
        total = sum(self.phase_counts.values())
        self.stats = {"loss": loss.detach(), "phase": kind, "eps": float(eps or 0.0)}
        self.stats.update({f"share_{k}": v / total for k, v in self.phase_counts.items()})
        self.last_losses[kind] = loss.detach()
        if len(self.last_losses) > 1:  # a logged row shows one phase's loss; keep the others' latest beside it
            self.stats.update({f"loss_{k}": v for k, v in self.last_losses.items()})
        if teacher_loss is not None:
            self.stats["teacher_loss"] = teacher_loss
        if traj.log_Z is not None:
            self.stats["log_Z"] = traj.log_Z.detach().float().mean()
        if grad_norm is not None:
            self.stats["grad_norm"] = grad_norm.detach()
        return loss.detach()

    def _backward(self, loss: torch.Tensor) -> None:
        if self._trainer is not None:
            self.manual_backward(loss)
        else:
            loss.backward()

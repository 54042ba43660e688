"""The LightningModule that trains a GFlowNet sampler: phase → trajectories → loss → optimise (DESIGN.md).

All sampling noise comes from the module's own ``torch.Generator``, whose state is saved in the checkpoint
with the step counter, so a resumed run is bit-identical to an uninterrupted one on CPU.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from sampler.energies.base import Energy, NonFiniteRewardError
from sampler.gfn.trajectories import Trajectories
from sampler.losses import LOSSES, get_loss
from sampler.training.config_check import ConfigError, loss_name
from sampler.training.phases import PhaseSchedule

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A loss that is NaN/inf: never trained on."""


def _root_cause(err: BaseException) -> str:
    """``Type: message`` of the innermost exception, on one line."""
    while err.__cause__ is not None:
        err = err.__cause__
    return f"{type(err).__name__}: " + " ".join(str(err).split())


def build_energy(cfg: DictConfig) -> Energy:
    """Instantiate ``cfg.energy`` and check it implements the protocol (SPEC §1)."""
    target = cfg.energy.get("_target_")
    try:
        energy = instantiate(cfg.energy)
    except InstantiationException as err:
        raise ConfigError(f"energy._target_={target} could not be built: {_root_cause(err)}") from err
    for attr in ("dim", "log_reward"):
        if not hasattr(energy, attr):
            raise ConfigError(f"energy._target_={target} is not an energy: it has no `{attr}` (see README, energies)")
    if not isinstance(energy, torch.nn.Module):
        raise ConfigError(f"energy._target_={target} must be a torch.nn.Module (subclass sampler.energies.Energy)")
    return energy


def build_gfn(cfg: DictConfig, energy: Energy) -> torch.nn.Module:
    """Instantiate ``cfg.model`` for ``energy``."""
    try:
        return instantiate(cfg.model, energy=energy)
    except InstantiationException as err:
        raise ConfigError(f"model could not be built: {_root_cause(err)}") from err


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
        self.exploration = instantiate(cfg.exploration)
        self.phases = PhaseSchedule(cfg.train.phases)
        self.forward_loss_name = loss_name(cfg.loss.name)
        self.backward_loss_name = loss_name(cfg.train.backward_loss)
        self.forward_loss = get_loss(self.forward_loss_name, cfg.loss.lam)
        self.backward_loss = get_loss(self.backward_loss_name, cfg.loss.lam)
        self.reparam = LOSSES[self.forward_loss_name].reparam
        self.seed = int(cfg.seed)
        self.generator: torch.Generator | None = None
        self._pending_generator_state: torch.Tensor | None = None
        self.stats: dict[str, torch.Tensor | float | str] = {}

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

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["sampler_state"] = {"generator": self._ensure_generator().get_state(), "seed": self.seed}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("sampler_state")
        if state is None:
            raise ConfigError("checkpoint has no sampler_state: it was not written by sampler")
        self.generator = None
        self._pending_generator_state = state["generator"]

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
        if len(t.lr_milestones) == 0:
            return opt
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(t.lr_milestones), gamma=t.lr_gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --------------------------------------------------------------------------------------------------- training
    def trajectories(self, phase: str, step: int) -> Trajectories:
        """A training batch for ``phase`` (``forward``: explored rollouts; ``backward``: bridges from targets)."""
        gen = self._ensure_generator()
        B = int(self.cfg.train.batch_size)
        if phase == "forward":
            eps = self.exploration(step)
            return self.gfn.rollout_forward(B, exploration_std=eps, generator=gen, reparam=self.reparam)
        x = self.backward_terminals(B, gen)
        return self.gfn.rollout_backward(x, generator=gen)

    def backward_terminals(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Terminal states for backward phases (``train.backward_source``; buffers plug in here)."""
        source = self.cfg.train.backward_source
        if source == "exact":
            if not getattr(self.energy, "has_sampler", False):
                raise ConfigError(
                    f"train.backward_source=exact needs exact samples, but {type(self.energy).__name__}"
                    " has no sample(); train with train.phases=forward"
                )
            return self.energy.sample(n, generator=generator)
        raise ConfigError(f"train.backward_source={source} is not available")

    def training_step(self, batch, batch_idx):
        step = self.global_step
        phase = self.phases(step)
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
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        grad_norm = None
        if self.cfg.train.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.gfn.parameters(), self.cfg.train.grad_clip)
        opt.step()
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()
        eps = self.exploration(step) if phase == "forward" else None
        self.stats = {"loss": loss.detach(), "phase": phase, "eps": float(eps or 0.0)}
        if traj.log_Z is not None:
            self.stats["log_Z"] = traj.log_Z.detach().float().mean()
        if grad_norm is not None:
            self.stats["grad_norm"] = grad_norm.detach()
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, logger=False)
        return loss.detach()

"""The LightningModule that trains a GFlowNet sampler: a thin adapter from the run config to
:class:`sampler.recipe.Recipe`, which holds the step (phase → trajectories → loss → optimise; docs/design.md).

The module builds the recipe's objects from the config — the ``_target_`` groups ``exploration``, ``buffer``,
``local_search`` and ``teacher`` by Hydra ``instantiate``, dependency injection as in lightning-hydra-template — and
owns what Lightning needs: the optimisers, the ``torch.Generator`` of all sampling noise and the checkpoint. The
generator's state is saved with the recipe's state and the step counter, so a resumed run is bit-identical to an
uninterrupted one on CPU. So is the energy's count of log-reward evaluations made by training steps
(``n_energy_calls``, the budget recent papers compare samplers at).
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sampler.adaptive_teacher import AdaptiveTeacher, TeacherSchedule
from sampler.discrete.evaluation import ModeTracker
from sampler.energies.base import Energy, counting_energy_calls
from sampler.energies.protocol import check_energy
from sampler.gfn.trajectories import Trajectories
from sampler.losses import LOSSES, flow_lr, get_loss
from sampler.recipe import NonFiniteLossError, PhaseSchedule, Recipe, param_groups
from sampler.training.config_check import ConfigError, loss_name, root_cause
from sampler.training.metrics_csv import COLUMNS, DISCRETE_COLUMNS

log = logging.getLogger(__name__)

__all__ = ["NonFiniteLossError", "SamplerModule", "build_energy", "build_gfn", "build_group", "build_teacher_gfn"]


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
    if not is_discrete(energy):  # a discrete target checks its own arguments and rewards when it is built
        check_energy(energy, target)
    return energy


def is_discrete(energy) -> bool:
    """Whether ``energy`` is a discrete target (:class:`sampler.discrete.DiscreteEnv`): it is sampled by the discrete
    GFN and evaluated exactly (docs/discrete.md)."""
    return bool(getattr(energy, "discrete", False))


def build_gfn(cfg: DictConfig, energy: Energy) -> torch.nn.Module:
    """Instantiate ``cfg.model`` for ``energy``."""
    log_Z_init = cfg.model.get("log_Z_init", 0.0)
    if isinstance(log_Z_init, str) and log_Z_init != "auto":
        raise ConfigError(f"model.log_Z_init must be a number or auto (got {log_Z_init})")
    target = {"env": energy} if is_discrete(energy) else {"energy": energy}  # DiscreteGFN(env, ...)
    try:
        if log_Z_init == "auto":
            return instantiate(cfg.model, **target, log_Z_init=0.0)
        return instantiate(cfg.model, **target)
    except InstantiationException as err:
        raise ConfigError(f"model could not be built: {root_cause(err)}") from err


def build_group(cfg: DictConfig, group: str, **runtime):
    """The object of a ``_target_`` config group (``buffer``, ``local_search``, ``teacher``), or ``None`` when the
    option selects nothing (``buffer=none``: no ``_target_``).

    Args:
        cfg: the run config.
        group: the group's key.
        **runtime: arguments only known at run time (``dim=`` of a buffer, ``gfn=`` of a teacher); a
            ``_partial_: true`` group is built into a partial and called with them.
    """
    node = cfg.get(group)
    if node is None or node.get("_target_") is None:
        return None
    try:
        obj = instantiate(node)
        return obj(**runtime) if node.get("_partial_", False) else obj
    except (InstantiationException, TypeError, ValueError) as err:
        raise ConfigError(f"{group}._target_={node._target_} could not be built: {root_cause(err)}") from err


def build_teacher_gfn(cfg: DictConfig, energy: Energy) -> torch.nn.Module:
    """The teacher network: the student's model config with the Langevin term off and a scalar log Z."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    if is_discrete(energy):
        model.update(flow="scalar")
    else:
        model.update(langevin=False, langevin_per_dim=False, flow="scalar")
    return build_gfn(OmegaConf.create({"model": model}), energy)


class SamplerModule(L.LightningModule):
    """Trains ``gfn`` to sample ``energy`` with the recipe ``cfg`` describes (:class:`sampler.recipe.Recipe`).

    Args:
        cfg: the composed run config (``model``, ``energy``, ``loss``, ``exploration``, ``buffer``,
            ``local_search``, ``teacher``, ``train``, ``seed``).
    """

    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.automatic_optimization = False
        self.cfg = cfg
        self.energy = build_energy(cfg)
        self.gfn = build_gfn(cfg, self.energy)
        self.exploration = instantiate(cfg.exploration)  # checked by check_config
        has_teacher = cfg.teacher.get("_target_") is not None
        self.teacher_gfn = build_teacher_gfn(cfg, self.energy) if has_teacher else None
        self.teaching: AdaptiveTeacher | None = build_group(cfg, "teacher", gfn=self.teacher_gfn)
        t = cfg.train
        self.forward_loss_name = loss_name(cfg.loss.name)
        self.backward_loss_name = loss_name(t.backward_loss)
        self.reparam = LOSSES[self.forward_loss_name].reparam
        self.seed = int(cfg.seed)
        uses_exact = not has_teacher and t.phases != "forward" and t.backward_source == "exact"
        if uses_exact and not getattr(self.energy, "has_sampler", False):
            raise ConfigError(
                f"train.backward_source=exact needs exact samples, but {type(self.energy).__name__} has no sample(); "
                "use train.backward_source=buffer or local_search, or train.phases=forward"
            )
        local_search = build_group(cfg, "local_search")
        if hasattr(local_search, "attach"):  # a search that follows the sampler's own policies (back-and-forth)
            local_search.attach(self.gfn)
        self.intrinsic = build_group(cfg, "intrinsic", gfn=self.gfn)  # GAFN: an nn.Module, saved with the model
        self.tracker = ModeTracker(self.energy) if is_discrete(self.energy) else None
        self.csv_columns = DISCRETE_COLUMNS if is_discrete(self.energy) else COLUMNS  # metrics.csv's header
        if is_discrete(self.energy):  # plots/metrics.png
            self.curve_keys = ("l1_exact", "jsd_exact", "l1_empirical", "modes_found_train", "loss", "log_Z")
        self.recipe = Recipe(
            self.gfn,
            get_loss(self.forward_loss_name, cfg.loss.lam),
            exploration=self.exploration,
            phases=TeacherSchedule() if has_teacher else PhaseSchedule(t.phases),
            backward_loss=get_loss(self.backward_loss_name, cfg.loss.lam),
            replay=build_group(cfg, "buffer", dim=self.energy.dim),
            local_search=local_search,
            backward_source=t.backward_source,
            teacher=self.teaching,
            batch_size=int(t.batch_size),
            grad_clip=None if t.grad_clip is None else float(t.grad_clip),
            energy=self.energy,
            reparam=self.reparam,
            warm_start_log_Z=cfg.model.get("log_Z_init") == "auto",
            intrinsic=self.intrinsic,
            observers=() if self.tracker is None else (self.tracker,),
        )
        self.offpolicy = self.recipe.offpolicy  # buffers and local search (logged by the run callback)
        self.generator: torch.Generator | None = None
        self._pending_generator_state: torch.Tensor | None = None
        self.stats: dict[str, torch.Tensor | float | str] = {}

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
        self.recipe.to(self.device)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["sampler_state"] = {
            "generator": self._ensure_generator().get_state(),
            "seed": self.seed,
            **self.recipe.state_dict(),  # offpolicy, phase_counts, last_losses
            "n_energy_calls": torch.tensor(self.n_energy_calls, dtype=torch.int64),
        }
        if self.tracker is not None:
            checkpoint["sampler_state"]["modes"] = self.tracker.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("sampler_state")
        if state is None:
            raise ConfigError("checkpoint has no sampler_state: it was not written by sampler")
        self.generator = None
        self._pending_generator_state = state["generator"]
        self.recipe.load_state_dict(state)
        if self.tracker is not None and "modes" in state:
            self.tracker.load_state_dict(state["modes"])
        if isinstance(self.energy, Energy):
            if "n_energy_calls" not in state:
                log.warning("checkpoint has no n_energy_calls (written before they were counted): counting from 0")
            self.energy.n_energy_calls = int(state.get("n_energy_calls", 0))

    @property
    def n_energy_calls(self) -> int:
        """Log-reward evaluations (points) made by training so far: rollouts (terminal log r and, with the Langevin
        parametrisation, ∇log r at every step), local search, teacher, the log Z warm start — not evaluation."""
        return int(getattr(self.energy, "n_energy_calls", 0))

    @property
    def phase_counts(self) -> dict[str, int]:
        """Steps per phase kind so far (saved in checkpoints)."""
        return self.recipe.phase_counts

    # ------------------------------------------------------------------------------------------------ optimisers
    def configure_optimizers(self):
        t = self.cfg.train
        lr_flow = flow_lr(self.cfg.loss.name, t.lr_flow)
        groups = param_groups(self.gfn, t.lr_policy, lr_flow, t.lr_back)
        if self.intrinsic is not None:  # GAFN's RND predictor (and its own state flow) at the policy's lr
            groups += self.intrinsic.param_groups(t.lr_policy, t.lr_policy)
        opt = torch.optim.Adam(groups, weight_decay=t.weight_decay)
        opts = [opt]
        if self.teaching is not None:
            opts.append(torch.optim.Adam(self.teaching.param_groups(t.lr_policy, lr_flow)))
        if len(t.lr_milestones) == 0:
            return opts
        scheds = [
            torch.optim.lr_scheduler.MultiStepLR(o, milestones=list(t.lr_milestones), gamma=t.lr_gamma) for o in opts
        ]
        return opts, [{"scheduler": s, "interval": "step"} for s in scheds]

    # --------------------------------------------------------------------------------------------------- training
    def trajectories(self, phase: str, step: int) -> Trajectories:
        """A training batch for ``phase`` (``forward``: explored rollouts; ``backward``: bridges from targets)."""
        return self.recipe.trajectories(phase, step, self._ensure_generator())

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
        """One optimisation step at ``step`` (:meth:`sampler.recipe.Recipe.step`), with the given optimisers.

        ``training_step`` calls it under Lightning; benchmarks and custom loops may call it directly. The energy's
        log-reward evaluations during the step are counted (``stats["n_energy_calls"]``, the running total).
        """
        with counting_energy_calls(self.energy):
            self.stats = self.recipe.step(
                step, opt, teacher_opt, generator=self._ensure_generator(), backward=self._backward
            )
        if isinstance(self.energy, Energy):
            self.stats["n_energy_calls"] = float(self.energy.n_energy_calls)
        return self.stats["loss"]

    def _backward(self, loss: torch.Tensor) -> None:
        if self._trainer is not None:
            self.manual_backward(loss)
        else:
            loss.backward()

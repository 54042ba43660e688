"""The LightningModule of ``task=ebm``: a thin adapter from the run config to :class:`sampler.ebm.EBMRecipe`, which
holds the step (data batch → negatives → contrastive loss → update of E_θ).

The module builds the data set (``data``), the energy network (``ebm/net``) and the negative sampler from the config —
Langevin chains with their buffer, or the platform's diffusion GFN built from the ``model``/``loss``/``exploration``/
``buffer``/``local_search`` groups as a sampler run builds it, with its own Adam — and owns what Lightning needs: E_θ's
optimiser, the ``torch.Generator`` of all sampling noise and the checkpoint. The generator's state, the chain buffer,
the GFN's optimiser and off-policy state, the warnings' counters and the energy-call count are saved with the step,
so a resumed run is bit-identical to an uninterrupted one on CPU.

Evaluation (``evaluate_at``, called by the run's evaluation every ``eval.every`` steps and at the end) generates
``eval.K`` samples as ``ebm.generate`` says, computes :func:`sampler.ebm.evaluation.evaluate_ebm` (the KDE baseline
and the digit classifier are fitted once per process and reused) and plots the landscape or the digit grid, and
the chains over time.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from sampler.ebm.config import build_data, build_net
from sampler.ebm.generate import generate
from sampler.ebm.learning import ChainBuffer, EBMRecipe, EnergyMonitor, GFNNegatives, LangevinNegatives
from sampler.ebm.nets import EBMEnergy
from sampler.losses import LOSSES, get_loss
from sampler.recipe import PhaseSchedule, Recipe, param_groups
from sampler.training.config_check import ConfigError, loss_name
from sampler.training.metrics_csv import EBM_COLUMNS

log = logging.getLogger(__name__)

#: Snapshots of each evaluation's chains in the chains-over-time plot.
CHAIN_SNAPSHOTS = 10
#: Samples shown in a digit grid.
GRID_SAMPLES = 100


class PerEBMStep:
    """An exploration schedule of the GFN negative sampler read in EBM steps: the GFN takes ``k`` steps per EBM step,
    so its step ``s`` is EBM step ``s // k`` (``exploration.horizon`` means the same as in a sampler run: half of
    ``trainer.max_steps`` by default)."""

    def __init__(self, schedule, k: int):
        self.schedule, self.k = schedule, int(k)

    def __call__(self, gfn_step: int):
        return self.schedule(gfn_step // self.k)


class EBMModule(L.LightningModule):
    """Learns the energy network of ``cfg.ebm.net`` on ``cfg.data`` with the negatives ``cfg.ebm`` describes.

    Args:
        cfg: the composed run config with ``task: ebm`` (checked by :func:`sampler.ebm.config.check_ebm_config`).

    Attributes:
        data: the data set; ``net``: E_θ; ``energy``: E_θ as a sampler target; ``gfn``: the GFN negative sampler
            (``None`` with Langevin negatives); ``recipe``: the :class:`EBMRecipe`; ``stats``: the last step's numbers.
    """

    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.automatic_optimization = False
        self.csv_columns = EBM_COLUMNS  # metrics.csv's header
        self.curve_keys = ("nll_test", "mmd", "energy_gap", "loss")  # plots/metrics.png
        self.cfg = cfg
        self.seed = int(cfg.seed)
        e = cfg.ebm
        self.data = build_data(cfg)
        self.net = build_net(cfg, self.data)
        self.image_shape = getattr(self.data, "image_shape", None)
        self.clamp = tuple(self.data.bounds) if self.image_shape is not None else None
        self.gfn = None
        self.gfn_optimizer: torch.optim.Optimizer | None = None
        energy = EBMEnergy(self.net, dim=self.data.dim, bounds=self.data.bounds, t_scale=cfg.model.get("t_scale"))
        if e.negatives == "gfn":
            negatives = self._gfn_negatives(cfg, energy)
            energy = self.gfn.energy
        else:
            lg = e.langevin
            buffer = None
            if lg.persistent:
                buffer = ChainBuffer(int(e.buffer.capacity), self.data.dim, float(e.buffer.reinit_prob),
                                     self.data.bounds, float(e.buffer.data_reinit))  # fmt: skip
            negatives = LangevinNegatives(
                int(lg.n_steps), float(lg.step_size), float(lg.noise_scale), buffer,
                grad_clip=None if lg.grad_clip is None else float(lg.grad_clip), clamp=self.clamp,
                metropolis=bool(lg.metropolis),
            )  # fmt: skip
        self.energy = energy
        self.recipe = EBMRecipe(
            self.net,
            negatives,
            self.data.train,
            alpha=float(e.alpha),
            batch_size=int(cfg.train.batch_size),
            grad_clip=None if e.grad_clip is None else float(e.grad_clip),
            energy=energy,
            monitor=EnergyMonitor(int(e.monitor.every), float(e.monitor.energy_limit)),
        )
        self.offpolicy = self.recipe.negatives.recipe.offpolicy if self.gfn is not None else None  # GFN replay
        self.generator: torch.Generator | None = None
        self._pending_generator_state: torch.Tensor | None = None
        self._kde: float | None = None  # the KDE baseline's test NLL, fitted at the first evaluation
        self._classifier = None  # the digit classifier, fitted at the first evaluation
        self.stats: dict[str, float] = {}

    def _gfn_negatives(self, cfg: DictConfig, energy: EBMEnergy) -> GFNNegatives:
        """The diffusion GFN of the ``model`` group on ``energy``, its recipe and its own Adam (as a sampler run
        builds them)."""
        from sampler.training.module import build_gfn, build_group  # noqa: PLC0415 - the sampler's builders

        t = cfg.train
        self.gfn = build_gfn(cfg, energy)
        k = int(cfg.ebm.gfn.steps_per_ebm_step)
        fwd, bwd = loss_name(cfg.loss.name), loss_name(t.backward_loss)
        recipe = Recipe(
            self.gfn,
            get_loss(fwd, cfg.loss.lam),
            exploration=PerEBMStep(instantiate(cfg.exploration), k),
            phases=PhaseSchedule(t.phases),
            backward_loss=get_loss(bwd, cfg.loss.lam),
            replay=build_group(cfg, "buffer", dim=self.data.dim),
            local_search=build_group(cfg, "local_search"),
            backward_source=t.backward_source,
            batch_size=int(t.batch_size),
            grad_clip=None if t.grad_clip is None else float(t.grad_clip),
            energy=self.gfn.energy,
            reparam=LOSSES[fwd].reparam,
            warm_start_log_Z=cfg.model.get("log_Z_init") == "auto",
        )
        groups = param_groups(self.gfn, float(t.lr_policy), float(t.lr_flow), float(t.lr_back))
        self.gfn_optimizer = torch.optim.Adam(groups, weight_decay=float(t.weight_decay))
        try:
            return GFNNegatives(recipe, self.gfn_optimizer, k)
        except ValueError as err:
            raise ConfigError(f"ebm.negatives=gfn: {err}") from err

    # Lightning sets _current_fx_name on every hook call and train_step replaces stats every step: plain values.
    _PLAIN_ATTRS = frozenset({"_current_fx_name", "stats"})

    def __setattr__(self, name, value):
        if name in EBMModule._PLAIN_ATTRS:
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
        if self.gfn_optimizer is not None:  # a restored state was loaded before the module moved: follow it
            self.gfn_optimizer.load_state_dict(self.gfn_optimizer.state_dict())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = self.recipe.state_dict()
        if self.gfn is not None:
            state["negatives"] = {k: v for k, v in state["negatives"].items() if k != "gfn"}  # in state_dict
        # under the platform's key for a module's own state (what marks a checkpoint as the platform's)
        checkpoint["sampler_state"] = {"generator": self._ensure_generator().get_state(), "seed": self.seed, **state}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("sampler_state")
        if not isinstance(state, dict) or "negatives" not in state:
            raise ConfigError("checkpoint holds no EBM state: it was not written by a task=ebm run")
        self.generator = None
        self._pending_generator_state = state["generator"]
        if self.gfn is not None:
            weights = {k[len("gfn.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("gfn.")}
            state = {**state, "negatives": {**state["negatives"], "gfn": weights}}
        self.recipe.load_state_dict(state)

    @property
    def n_energy_calls(self) -> int:
        """Energy evaluations (points) the negative sampler made in training so far (chains, or the GFN's
        training and its negatives) — not evaluation."""
        return int(self.recipe.n_energy_calls)

    # ------------------------------------------------------------------------------------------------ optimisers
    def configure_optimizers(self):
        e = self.cfg.ebm
        opt = torch.optim.Adam(self.net.parameters(), lr=float(e.lr), weight_decay=float(e.weight_decay))
        if e.lr_schedule == "constant":
            return opt
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(self.cfg.trainer.max_steps))
        return [opt], [{"scheduler": sched, "interval": "step"}]

    # --------------------------------------------------------------------------------------------------- training
    def training_step(self, batch, batch_idx):
        self.train_step(self.global_step, self.optimizers())
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()
        return None  # the progress display reads self.stats

    def train_step(self, step: int, opt) -> float:
        """One EBM step at ``step`` (:meth:`EBMRecipe.step`) with E_θ's optimiser ``opt``.

        ``training_step`` calls it under Lightning; custom loops may call it directly. Sets :attr:`stats`: the
        recipe's (``loss``, ``energy_real``, ``energy_fake``, ``energy_gap``, the chain and buffer numbers or the
        GFN's, ``n_energy_calls`` and ``n_energy_calls_<sampler>``) and ``lr``.

        Raises:
            NonFiniteEBMLossError: a NaN/inf loss (θ is not updated; the run stops with its last checkpoint).
        """
        stats = self.recipe.step(step, opt, generator=self._ensure_generator(), backward=self._backward)
        stats["lr"] = float(opt.param_groups[0]["lr"])
        self.stats = stats
        return stats["loss"]

    def _backward(self, loss: torch.Tensor) -> None:
        if self._trainer is not None:
            self.manual_backward(loss)
        else:
            loss.backward()

    # ------------------------------------------------------------------------------------------------- sampling
    def sample(
        self,
        n: int,
        method: str | None = None,
        generator: torch.Generator | None = None,
        n_steps: int | None = None,
        record: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``n`` samples of the learned model.

        Args:
            n: number of samples.
            method: ``noise``, ``buffer`` (continue the PCD chains; at most ``ebm.buffer.capacity`` a call),
                ``annealed`` or ``gfn`` (the GFN negative sampler's rollouts); default ``ebm.generate.method``.
            generator: the noise (on the module's device).
            n_steps: Langevin steps (default ``ebm.generate.n_steps``; not used by ``gfn``).
            record: also return about :data:`CHAIN_SNAPSHOTS` snapshots of the chains (or GFN trajectories).

        Returns:
            ``(samples [n, d] on the module's device, snapshots)``.

        Raises:
            ValueError: a method this model cannot take (``buffer`` without PCD chains, ``gfn`` without a GFN).
        """
        g = self.cfg.ebm.generate
        method = method or g.method
        was_training = self.training
        self.eval()
        try:
            if method == "gfn":
                if self.gfn is None:
                    raise ValueError("method=gfn needs a model trained with ebm.negatives=gfn")
                with torch.no_grad():  # ∇E of the Langevin term is taken inside EBMEnergy.log_reward_and_grad
                    traj = self.gfn.rollout_forward(n, generator=generator)
                T = traj.states.shape[1] - 1
                every = max(1, T // CHAIN_SNAPSHOTS)
                snaps = [traj.states[:, k] for k in (*range(0, T, every), T)] if record else []
                return traj.terminal_states.detach(), snaps
            steps = int(n_steps if n_steps is not None else g.n_steps)
            buffer = getattr(self.recipe.negatives, "buffer", None)
            if method == "buffer" and buffer is None:
                raise ValueError("method=buffer needs the PCD chain buffer (a model trained with Langevin negatives "
                                 "and ebm.langevin.persistent=true); use noise or annealed")  # fmt: skip
            lg = self.cfg.ebm.langevin
            x, _, snaps = generate(
                self.net, n, method, bounds=self.data.bounds, n_steps=steps, step_size=float(g.step_size),
                noise_scale=float(g.noise_scale), grad_clip=None if lg.grad_clip is None else float(lg.grad_clip),
                clamp=self.clamp, buffer=buffer, t_start=float(g.t_start), metropolis=bool(lg.metropolis),
                record_every=max(1, steps // CHAIN_SNAPSHOTS) if record else None, generator=generator,
            )  # fmt: skip
            return x, snaps
        finally:
            self.train(was_training)

    # ----------------------------------------------------------------------------------------------- evaluation
    def evaluate_at(
        self, step: int, K: int, plot_path: Path | None = None, noise_seed: int = 0, title: str | None = None
    ) -> tuple[dict[str, float], torch.Tensor]:
        """The metrics of the model at ``step`` on ``K`` generated samples, and the samples.

        Args:
            step: the training step (for titles).
            K: samples to generate (``buffer`` gives at most ``ebm.buffer.capacity``).
            plot_path: where the landscape (2-D data) or the sample grid (images) goes, or ``None``; the chains over
                time go beside it (``chains_<step>.png``).
            noise_seed: seeds the evaluation's own generator (training's noise is untouched).
            title: the plots' title (default: the step and the test NLL).

        Returns:
            ``(metrics, samples [K, d] on the CPU)``: :func:`~sampler.ebm.evaluation.evaluate_ebm`'s keys and
            ``eval_s``.
        """
        from sampler.ebm.evaluation import digit_classifier, evaluate_ebm, kde_nll  # noqa: PLC0415 - scikit-learn

        t0 = time.perf_counter()
        gen = torch.Generator(device=self.device).manual_seed(int(noise_seed))
        samples, snaps = self.sample(K, generator=gen, record=plot_path is not None)
        samples = samples.detach().cpu()
        data = self.data
        if self.image_shape is not None:
            if self._classifier is None and getattr(data, "train_labels", None) is not None:
                self._classifier = digit_classifier(data)
        elif self._kde is None:
            self._kde = kde_nll(data.train, data.test)[0]
        metrics = evaluate_ebm(self.net, data, samples, self.n_energy_calls, classifier=self._classifier,
                               kde=self._kde, generator=gen)  # fmt: skip
        metrics["eval_s"] = time.perf_counter() - t0
        if plot_path is not None:
            self._plot(step, samples, snaps, Path(plot_path), metrics, title)
        return metrics, samples

    def _plot(self, step: int, samples, snaps, path: Path, metrics: dict, title: str | None) -> None:
        from sampler.ebm.plots import plot_chains, plot_digit_grid, plot_landscape, plot_projection  # noqa: PLC0415

        if title is None:
            shown = next((k for k in ("nll_test", "classifier_confidence", "mmd") if k in metrics), None)
            title = f"{self.data.name}, step {step}" + (f"  {shown}={metrics[shown]:.4g}" if shown else "")
        path.parent.mkdir(parents=True, exist_ok=True)
        chains = path.with_name(f"chains_{step:07d}.png")
        try:
            if self.image_shape is not None:
                plot_digit_grid(samples[:GRID_SAMPLES], path, self.image_shape, title=title)
            elif self.data.dim == 2:
                plot_landscape(self.net, self.data, path, samples, title=title)
            else:
                plot_projection(self.data, samples, path, title=title)
            if snaps:
                net = self.net if self.data.dim == 2 else None
                plot_chains([s.cpu() for s in snaps], chains, net, self.data, image_shape=self.image_shape)
        except Exception as err:  # noqa: BLE001 - a plot never kills a run
            log.warning("could not plot the EBM at step %d: %s", step, err)

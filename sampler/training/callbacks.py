"""The run callback: training rows in ``metrics.csv``, periodic evaluation with plots, atomic checkpoints."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from sampler.evaluation import evaluate, plot_samples
from sampler.training.checkpointing import save_atomic
from sampler.training.loggers import RunLog

log = logging.getLogger(__name__)


def eval_seed(seed: int, step: int) -> int:
    """Seed of the evaluation generator at ``step``: independent of the training noise and of resumption."""
    return (int(seed) * 1_000_003 + int(step)) % (2**63 - 1)


def samples_plot(run_dir: Path, step: int, plots: bool = True) -> Path | None:
    """Where a run's samples plot at ``step`` goes (``None``: no plot)."""
    return run_dir / "plots" / f"samples_{step:07d}.png" if plots else None


def run_evaluation(
    module, step: int, K: int, plot_path: Path | None = None, noise_seed: int | None = None, title: str | None = None
):
    """Evaluate ``module.gfn`` at ``step`` (SPEC §8), optionally plotting samples to ``plot_path``.

    The evaluation noise is seeded with ``noise_seed``, by default :func:`eval_seed` of the run's seed and the step,
    so re-evaluating a checkpoint reproduces the run's own evaluation at that step.
    """
    gfn, energy = module.gfn, module.energy
    t0 = time.perf_counter()
    seed = eval_seed(module.seed, step) if noise_seed is None else noise_seed
    gen = torch.Generator(device=energy.device).manual_seed(seed)
    was_training = gfn.training
    gfn.eval()
    try:
        with torch.no_grad():  # ∇log r (Langevin) is taken inside log_reward_and_grad, which enables grad itself
            metrics, samples = evaluate(gfn, energy, K=K, generator=gen, seed=module.seed)
    finally:
        gfn.train(was_training)
    metrics["step"] = float(step)
    metrics["eval_s"] = time.perf_counter() - t0
    if plot_path is not None:
        exact = energy.sample(K, generator=gen).cpu() if getattr(energy, "has_sampler", False) else None
        if title is None:
            title = f"step {step}" + (f"  ΔlogZ_rw={metrics['dlogZ_rw']:.3f}" if "dlogZ_rw" in metrics else "")
        try:
            plot_samples(energy, samples, plot_path, exact=exact, title=title)
        except Exception as err:  # noqa: BLE001 - a plot never kills a run
            log.warning("could not plot samples at step %d: %s", step, err)
    return metrics, samples


class RunCallback(L.Callback):
    """Writes training rows (to ``metrics.csv`` and the logger) every ``log_every`` steps, evaluates every
    ``eval_every`` steps (not the last one: ``train`` does the final evaluation) and checkpoints every
    ``ckpt_every`` steps and at the end."""

    def __init__(
        self,
        run_dir: Path,
        runlog: RunLog,
        steps: int,
        log_every: int,
        eval_every: int,
        eval_K: int,
        ckpt_every: int,
        plots: bool = True,
    ):
        self.run_dir, self.runlog, self.steps = run_dir, runlog, steps
        self.log_every, self.eval_every, self.eval_K = log_every, eval_every, eval_K
        self.ckpt_every, self.plots = ckpt_every, plots

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step  # steps completed
        if step % self.log_every == 0 or step == self.steps:
            row = {k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in module.stats.items()}
            row.update(module.offpolicy.stats())
            for g in trainer.optimizers[0].param_groups:
                if g.get("name") in ("policy", "flow"):
                    row[f"lr_{g['name']}"] = g["lr"]
            self.runlog.append(step, "train", row)
        if step % self.eval_every == 0 and step < self.steps:
            plot = samples_plot(self.run_dir, step, self.plots)
            metrics, _ = run_evaluation(module, step, self.eval_K, plot)
            self.runlog.append(step, "eval", metrics)
            self.runlog.image("samples", plot, step)
            log.info("step %d: %s", step, _summary(metrics))
        if step % self.ckpt_every == 0 or step == self.steps:
            save_atomic(trainer, self.run_dir / "checkpoints")


def _summary(m: dict) -> str:
    keys = ("dlogZ", "dlogZ_rw", "log_Z_rw", "ess", "w2", "mode_coverage")
    return "  ".join(f"{k}={m[k]:.4g}" for k in keys if k in m)


class LossProgressBar(TQDMProgressBar):
    """Lightning's progress bar with the latest training loss, read from the module's step statistics (instead of
    ``LightningModule.log``, whose bookkeeping costs ~2.5 ms a call — several per cent of a CPU step)."""

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        loss = pl_module.stats.get("loss") if isinstance(getattr(pl_module, "stats", None), dict) else None
        if loss is not None:
            items["loss"] = f"{float(loss):.4g}"
        return items

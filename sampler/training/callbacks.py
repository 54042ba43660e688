"""The run callback: training rows in ``metrics.csv``, periodic evaluation with plots, atomic checkpoints, and a
clean stop (checkpoint first) when the process is asked to terminate (:class:`StopSignals`); and the progress
display: a bar on a terminal, one plain line every N steps in a log file (:func:`progress_bar`)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

from sampler.evaluation import evaluate, plot_samples
from sampler.training.checkpointing import LAST, save_atomic
from sampler.training.config_check import ConfigError
from sampler.training.loggers import RunLog
from sampler.training.manifest import named_write_error

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
    """Evaluate ``module.gfn`` at ``step`` (docs/spec.md §8), optionally plotting samples to ``plot_path``.

    The evaluation noise is seeded with ``noise_seed``, by default :func:`eval_seed` of the run's seed and the step,
    so re-evaluating a checkpoint reproduces the run's own evaluation at that step.
    """
    seed = eval_seed(module.seed, step) if noise_seed is None else noise_seed
    if hasattr(module, "evaluate_at"):  # a module of another task (sampler.training.tasks) evaluates itself
        metrics, samples = module.evaluate_at(step, K, plot_path, noise_seed=seed, title=title)
        metrics["step"] = float(step)
        return metrics, samples
    if getattr(module.energy, "discrete", False):
        return _evaluate_discrete(module, step, K, plot_path, seed)
    gfn, energy = module.gfn, module.energy
    t0 = time.perf_counter()
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


def _evaluate_discrete(module, step: int, K: int, plot_path: Path | None, seed: int):
    """:func:`run_evaluation` on a discrete target: the exact and empirical metrics of
    :func:`sampler.discrete.evaluate_discrete` from ``K`` fresh samples, the modes found in training, the trajectories
    and reward evaluations so far; plots of the distributions (2-D grids) and of the modes found."""
    from sampler.discrete.evaluation import evaluate_discrete  # noqa: PLC0415 - continuous runs never need it
    from sampler.discrete.plots import plot_grid_distributions, plot_modes_found  # noqa: PLC0415

    gfn, env = module.gfn, module.energy
    t0 = time.perf_counter()
    gen = torch.Generator(device=env.device).manual_seed(seed)
    was_training = gfn.training
    gfn.eval()
    try:
        metrics, samples = evaluate_discrete(gfn, env, n_samples=K, generator=gen, return_samples=True)
    finally:
        gfn.train(was_training)
    if module.tracker is not None:
        metrics.update(module.tracker.metrics())
    metrics["n_energy_calls"] = float(module.n_energy_calls)
    metrics["step"] = float(step)
    metrics["eval_s"] = time.perf_counter() - t0
    if plot_path is not None:
        try:
            if env.ndim == 2 and env.exact:
                plot_grid_distributions(env, gfn, samples.cpu(), plot_path)
            if module.tracker is not None:
                plot_modes_found(module.tracker, plot_path.parent / "modes_found.png")
        except Exception as err:  # noqa: BLE001 - a plot never kills a run
            log.warning("could not plot samples at step %d: %s", step, err)
    return metrics, samples.float()


class StopSignals:
    """SIGTERM and SIGINT (Ctrl-C) ask the run to stop after the training step in progress, with a checkpoint.

    Used as a context manager around a run. A signal whose handler is not the default one on entry is left alone:
    under submitit the SIGTERM/SIGUSR2 handlers are submitit's, which requeue the job. The handler only records
    the signal (:attr:`received`) and restores the default action for it, so the same signal a second time ends
    the process at once. The previous handlers are restored on exit.
    """

    #: The handlers a run may replace: the defaults (Python's own for SIGINT raises ``KeyboardInterrupt``).
    DEFAULTS = {signal.SIGTERM: (signal.SIG_DFL,), signal.SIGINT: (signal.SIG_DFL, signal.default_int_handler)}

    def __init__(self):
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            for sig, defaults in self.DEFAULTS.items():
                if signal.getsignal(sig) in defaults:
                    self._previous[sig] = signal.getsignal(sig)
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def install(self) -> None:
        """(Re)claim the signals this run owns. Lightning's ``fit`` wraps SIGTERM in its own handler, whose
        ``SIGTERMException`` would end the run with status 0 and no checkpoint, so the run callback calls this
        again once training starts."""
        for sig in self._previous:
            if sig != self.received:
                signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        sig = signal.Signals(signum)
        if self.received == sig:  # the same signal again (after Lightning put this handler back): die now
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
            return
        signal.signal(sig, signal.SIG_DFL)
        if self.received is None:
            self.received = sig
        log.warning(
            "%s received: the run stops after this training step, with a checkpoint (send it again to stop at once)",
            sig.name,
        )


class RunCallback(L.Callback):
    """Writes training rows (to ``metrics.csv`` and the logger) every ``log_every`` steps, evaluates every
    ``eval_every`` steps (not the last one: ``train`` does the final evaluation) and checkpoints every
    ``ckpt_every`` steps and at the end.

    With ``stop`` (a :class:`StopSignals`), a signal received during a step ends training after that step: a
    checkpoint at the step, then ``interrupted = (signal, step)`` and ``trainer.should_stop``.
    """

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
        stop: StopSignals | None = None,
    ):
        self.run_dir, self.runlog, self.steps = run_dir, runlog, steps
        self.log_every, self.eval_every, self.eval_K = log_every, eval_every, eval_K
        self.ckpt_every, self.plots = ckpt_every, plots
        self.stop = stop
        self.interrupted: tuple[signal.Signals, int] | None = None

    def on_train_start(self, trainer, module):
        if self.stop is not None:
            self.stop.install()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step  # steps completed
        if step % self.log_every == 0 or step == self.steps:
            row = {k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in module.stats.items()}
            offpolicy = getattr(module, "offpolicy", None)  # buffers and local search (samplers)
            if offpolicy is not None:
                row.update(offpolicy.stats())
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
        saved = step % self.ckpt_every == 0 or step == self.steps
        if saved:
            save_checkpoint(trainer, self.run_dir / "checkpoints")
        if self.stop is not None and self.stop.received is not None:
            if not saved:
                save_checkpoint(trainer, self.run_dir / "checkpoints")
            self.interrupted = (self.stop.received, step)
            trainer.should_stop = True


def save_checkpoint(trainer, directory: Path) -> Path:
    """:func:`~sampler.training.checkpointing.save_atomic`, whose write errors name ``directory/last.ckpt``.

    Args:
        trainer: the Lightning trainer to save.
        directory: the run's ``checkpoints`` directory.

    Returns:
        The path of the new ``last.ckpt``.
    """
    try:
        return save_atomic(trainer, directory)
    except OSError as err:
        raise named_write_error(err, directory / LAST) from err


def _summary(m: dict) -> str:
    keys = ("dlogZ", "dlogZ_rw", "log_Z_rw", "ess", "w2", "mode_coverage")  # continuous targets
    keys += ("l1_exact", "jsd_exact", "l1_empirical", "modes_found", "modes_found_train")  # discrete targets
    keys += ("nll_test", "nll_test_kde", "kl_true", "mmd", "energy_gap", "classifier_confidence")  # EBMs
    return "  ".join(f"{k}={m[k]:.4g}" for k in keys if k in m)


class LossProgressBar(TQDMProgressBar):
    """Lightning's progress bar with the latest training loss, read from the module's step statistics (instead of
    ``LightningModule.log``, whose bookkeeping costs ~2.5 ms a call — several per cent of a CPU step)."""

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        loss = pl_module.stats.get("loss") if isinstance(getattr(pl_module, "stats", None), dict) else None
        if loss is not None:
            items["loss"] = f"{float(loss):.4g}"
        gap = pl_module.stats.get("energy_gap") if loss is not None else None  # an EBM's E(x⁻) − E(x⁺)
        if gap is not None:
            items["gap"] = f"{float(gap):.3g}"
        return items


#: Lines a run prints when its output is not a terminal and ``trainer.progress_every`` is not set.
PROGRESS_LINES = 50


def progress_bar(steps: int, every: int | None = None, stream=None) -> ProgressBar:
    """The progress display for a run of ``steps`` steps: Lightning's bar (:class:`LossProgressBar`) when ``stream``
    is a terminal (or a Jupyter kernel), else :class:`PlainProgress`, one line every ``every`` steps.

    A bar redraws itself with carriage returns after every step, which a log file (SLURM, CI, ``nohup``) keeps:
    hundreds of kilobytes for a 1000-step run.

    Args:
        steps: the run's ``trainer.max_steps``.
        every: steps between lines when not on a terminal; ``None``: ``steps // PROGRESS_LINES`` (at least 1).
        stream: where the output goes (default ``sys.stdout``, where Lightning's bar and Hydra's log lines go).

    Returns:
        The callback to pass to the ``Trainer``.

    Raises:
        ConfigError: ``every`` is not a positive integer.
    """
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ConfigError(f"trainer.progress_every must be a positive integer or null (got {every!r})")
    stream = sys.stdout if stream is None else stream
    if _is_terminal(stream):
        return LossProgressBar()
    return PlainProgress(steps, every if every is not None else max(1, steps // PROGRESS_LINES))


def _is_terminal(stream) -> bool:
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    return type(stream).__module__.startswith("ipykernel")  # a notebook shows a bar's redraws in place


class PlainProgress(ProgressBar):
    """Progress as one log line every ``every`` steps (and at the last step), for output that is not a terminal::

        step 2500/25000  loss 0.2401  eps 0.1  log_Z 4.817  3.3 it/s  eta 1:08:20

    ``loss``, ``eps`` (the exploration noise) and ``log_Z`` are the module's step statistics; the speed is the mean
    since this process started training (evaluations included, so the ETA counts the ones to come). The lines go
    through :mod:`logging`, beside the evaluation lines and into the run's ``train.log`` under Hydra.

    Args:
        steps: the run's last step (``trainer.max_steps``).
        every: steps between lines.
    """

    def __init__(self, steps: int, every: int):
        super().__init__()
        self.steps, self.every = int(steps), int(every)
        self._enabled = True
        self._start: tuple[float, int] | None = None  # (time, step) when this process started training

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, pl_module):
        self._start = (time.perf_counter(), int(trainer.global_step))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = int(trainer.global_step)
        if self._enabled and (step % self.every == 0 or step == self.steps):
            log.info("%s", self.line(step, getattr(pl_module, "stats", None)))

    def line(self, step: int, stats: dict | None, now: float | None = None) -> str:
        """The progress line at ``step`` (completed steps).

        Args:
            step: steps completed.
            stats: the module's statistics of the last step (``loss``, ``eps``, ``log_Z``; any may be missing).
            now: the ``time.perf_counter()`` reading to time against (default: now).

        Returns:
            ``"step S/N  loss L  eps E  log_Z Z  R it/s  eta H:MM:SS"``.
        """
        parts = [f"step {step}/{self.steps}"]
        for key, fmt in (("loss", ".4g"), ("eps", ".3g"), ("log_Z", ".4g"), ("energy_gap", ".3g")):
            value = stats.get(key) if isinstance(stats, dict) else None
            if isinstance(value, torch.Tensor | float | int) and not isinstance(value, bool):
                parts.append(f"{key} {float(value):{fmt}}")
        if self._start is not None:
            t0, step0 = self._start
            elapsed = (time.perf_counter() if now is None else now) - t0
            if step > step0 and elapsed > 0:
                rate = (step - step0) / elapsed
                parts.append(f"{rate:.3g} it/s")
                parts.append(f"eta {_clock(max(0, self.steps - step) / rate)}")
        return "  ".join(parts)


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"

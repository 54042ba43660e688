"""``train(cfg)``: one complete run in its run directory — the function ``scripts/train.py`` wraps.

Run-directory contract (DESIGN.md): ``config_resolved.yaml``, ``manifest.json``, ``metrics.csv``,
``metrics.json`` (final evaluation), ``checkpoints/last.ckpt``, ``samples.pt``, ``plots/*.png``. Starting the
same command again in the same directory resumes from ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.environments import LightningEnvironment
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from sampler.energies.base import NonFiniteRewardError
from sampler.evaluation import plot_metric_curves
from sampler.training.callbacks import LossProgressBar, RunCallback, run_evaluation, samples_plot
from sampler.training.checkpointing import CheckpointError, find_resume_checkpoint, has_checkpoint
from sampler.training.config_check import ConfigError, check_config
from sampler.training.loggers import build_run_log
from sampler.training.manifest import build_manifest, now, write_json
from sampler.training.metrics_csv import MetricsCSV
from sampler.training.module import NonFiniteLossError, SamplerModule

log = logging.getLogger(__name__)

#: Errors a user can fix; scripts print their one-line message instead of a traceback.
USER_ERRORS = (ConfigError, CheckpointError)
NUMERICAL_ERRORS = (NonFiniteRewardError, NonFiniteLossError)


class _Steps(Dataset):
    """A placeholder dataset: the sampler makes its own data; one item per training step."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def run_dir_of(cfg: DictConfig) -> Path:
    try:
        return Path(str(cfg.paths.run_dir))
    except Exception as err:  # noqa: BLE001 - ${hydra:...} outside a Hydra app
        raise ConfigError("paths.run_dir is not set (outside `scripts/train.py`, pass paths.run_dir=DIR)") from err


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Train (or resume) the run described by ``cfg`` and evaluate it.

    Args:
        cfg: the composed config (``conf/config.yaml``).

    Returns:
        ``(metrics, objects)``: the final metrics of ``metrics.json``, and ``{"module", "trainer", "run_dir"}``.
    """
    check_config(cfg)
    run_dir = run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if cfg.checkpoint.resume and cfg.checkpoint.continue_unfinished and not has_checkpoint(run_dir / "checkpoints"):
        default_parent = (Path(str(cfg.paths.root)) / "runs").resolve()
        twin = find_unfinished_twin(run_dir, resolved) if run_dir.resolve().parent == default_parent else None
        if twin is not None:
            run_dir = _move_to(run_dir, twin)
            resolved["paths"]["run_dir"] = str(run_dir)
    lock = _RunLock(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    ckpt_path, ckpt = find_resume_checkpoint(ckpt_dir) if cfg.checkpoint.resume else (None, None)
    saved_cfg = run_dir / "config_resolved.yaml"
    if ckpt_path is not None and saved_cfg.exists():
        previous = OmegaConf.to_container(OmegaConf.load(saved_cfg), resolve=True)
        changed = _changed_keys(previous, resolved, ignore=("paths",))
        if changed:
            raise ConfigError(
                f"{run_dir} holds a run with a different config ({', '.join(changed[:5])}); "
                "resume with the same command or choose a new run directory"
            )
    OmegaConf.save(OmegaConf.create(resolved), saved_cfg)

    with lock:
        return _train_in(cfg, run_dir, ckpt_path, ckpt)


def _train_in(cfg: DictConfig, run_dir: Path, ckpt_path: Path | None, ckpt: dict | None) -> tuple[dict, dict]:
    _quiet_lightning()
    L.seed_everything(int(cfg.seed), workers=False, verbose=False)
    module = SamplerModule(cfg)
    accelerator = cfg.trainer.accelerator
    device = (
        "cuda" if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()) else "cpu"
    )

    manifest_path = run_dir / "manifest.json"
    if ckpt_path is not None and manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        manifest.setdefault("resumes", []).append(
            {"time": now(), "from_step": int(ckpt["global_step"]), "checkpoint": ckpt_path.name}
        )
        manifest["end_time"] = None
    else:
        manifest = build_manifest(int(cfg.seed), device)
    write_json(manifest_path, manifest)

    csv = MetricsCSV(run_dir / "metrics.csv")
    if ckpt_path is None:
        csv.reset()
    else:
        csv.truncate(int(ckpt["global_step"]))
        log.info("resuming from %s at step %d", ckpt_path, int(ckpt["global_step"]))
    runlog = build_run_log(cfg, run_dir, csv, None if ckpt_path is None else int(ckpt["global_step"]))
    ok = False
    try:
        final, trainer, module = _fit_and_evaluate(cfg, run_dir, module, runlog, ckpt_path)
        ok = True
    finally:
        runlog.close(ok)
    manifest["end_time"] = now()
    write_json(manifest_path, manifest)
    return final, {"module": module, "trainer": trainer, "run_dir": run_dir}


def _fit_and_evaluate(cfg: DictConfig, run_dir: Path, module: SamplerModule, runlog, ckpt_path: Path | None):
    """Train to ``trainer.max_steps`` (from ``ckpt_path`` if given), then the final evaluation and its files."""
    steps = int(cfg.trainer.max_steps)
    callback = RunCallback(
        run_dir,
        runlog,
        steps,
        int(cfg.trainer.log_every_n_steps),
        int(cfg.eval.every),
        int(cfg.eval.K),
        int(cfg.checkpoint.every),
        bool(cfg.eval.plots),
    )
    trainer_kw = {
        k: v
        for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items()
        if k not in ("log_every_n_steps", "max_steps")
    }
    progress = [LossProgressBar()] if trainer_kw.get("enable_progress_bar", True) else []
    trainer = L.Trainer(
        max_steps=steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        callbacks=[callback, *progress],
        inference_mode=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        enable_model_summary=False,
        default_root_dir=str(run_dir),
        plugins=[LightningEnvironment()],
        **trainer_kw,
    )
    loader = torch.utils.data.DataLoader(_Steps(steps), batch_size=None, shuffle=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch.*")
        warnings.filterwarnings("ignore", message=".*fault-tolerant.*")
        trainer.fit(
            module, train_dataloaders=loader, ckpt_path=str(ckpt_path) if ckpt_path else None, weights_only=True
        )

    step = int(trainer.global_step)
    plot = samples_plot(run_dir, step, bool(cfg.eval.plots))
    metrics, samples = run_evaluation(module, step, int(cfg.eval.K), plot)
    runlog.append(step, "eval", metrics, replace=True)
    runlog.image("samples", plot, step)
    final = {k: float(v) for k, v in metrics.items() if k != "eval_s"}
    torch.save(samples, run_dir / "samples.pt")
    write_json(run_dir / "metrics.json", final)
    if cfg.eval.plots:
        try:
            plot_metric_curves(run_dir / "metrics.csv", run_dir / "plots" / "metrics.png")
            runlog.image("metric_curves", run_dir / "plots" / "metrics.png", step)
        except Exception as err:  # noqa: BLE001 - a plot never kills a run
            log.warning("could not plot metric curves: %s", err)
    return final, trainer, module


class _RunLock:
    """``run.lock`` (pid and host) while a process trains in a run directory, so no second process joins it."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "run.lock"

    def __enter__(self):
        if self.path.exists() and _lock_is_live(self.path):
            raise ConfigError(f"another process is training in {self.path.parent} ({self.path.read_text().strip()})")
        self.path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def _lock_is_live(path: Path) -> bool:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if info.get("host") != socket.gethostname():
        return True  # cannot tell; assume the other machine is still at work
    try:
        os.kill(int(info["pid"]), 0)
    except (ProcessLookupError, ValueError, KeyError):
        return False
    except PermissionError:
        return True
    return True


def find_unfinished_twin(run_dir: Path, resolved: dict) -> Path | None:
    """The newest sibling of ``run_dir`` that holds an unfinished run (a checkpoint, no ``metrics.json``, no live
    process) of exactly this config: starting the same command again continues it."""
    siblings = sorted((p for p in run_dir.parent.iterdir() if p.is_dir() and p != run_dir), reverse=True)
    for other in siblings:
        saved = other / "config_resolved.yaml"
        if (other / "metrics.json").exists() or not saved.exists():
            continue
        if not has_checkpoint(other / "checkpoints"):
            continue
        if (other / "run.lock").exists() and _lock_is_live(other / "run.lock"):
            continue
        try:
            previous = OmegaConf.to_container(OmegaConf.load(saved), resolve=True)
        except Exception:  # noqa: BLE001 - an unreadable config is not a twin
            continue
        if not _changed_keys(previous, resolved, ignore=("paths",)):
            return other
    return None


def _move_to(new_dir: Path, twin: Path) -> Path:
    """Continue in ``twin``: log there, and remove ``new_dir`` if it holds nothing but Hydra's own files."""
    log.info(
        "continuing the unfinished run in %s (same config; checkpoint.continue_unfinished=false starts afresh)", twin
    )
    handler = logging.FileHandler(twin / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    if all(p.name in (".hydra", "train.log") for p in new_dir.iterdir()):
        shutil.rmtree(new_dir, ignore_errors=True)
    return twin


def _quiet_lightning() -> None:
    """Lightning's start-up banners (GPU/TPU availability, tips) are noise in a sweep's logs."""
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
        "lightning.fabric.utilities.seed",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
    # Under SLURM the job is already the task submitit started; Lightning's hint to prepend `srun` is noise.
    warnings.filterwarnings("ignore", message=".*The `srun` command is available on your system.*")


def _changed_keys(a, b, ignore=(), prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if not prefix and k in ignore:
                continue
            out += _changed_keys(a.get(k), b.get(k), ignore, f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def main(cfg: DictConfig) -> dict:
    """Entry point for scripts: user errors become one line on stderr (exit status 2; 1 for numerical faults)."""
    try:
        metrics, objects = train(cfg)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except NUMERICAL_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"run directory: {objects['run_dir']}")
    print(json.dumps(metrics, indent=2))
    return metrics

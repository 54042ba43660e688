"""``train(cfg)``: one complete run in its run directory — the function ``scripts/train.py`` wraps.

Run-directory contract (docs/design.md): ``config_resolved.yaml``, ``manifest.json``, ``metrics.csv``,
``metrics.json`` (final evaluation), ``checkpoints/last.ckpt``, ``samples.pt``, ``plots/*.png``, and ``.hydra/``
under Hydra. Starting the same command again in the same directory resumes from ``checkpoints/last.ckpt``.

One process at a time trains in a run directory: it holds ``run.lock`` (an OS lock, released by the kernel when the
process dies, however it dies) and writes nothing there before it holds it. SIGTERM or Ctrl-C stops the run after
the step in progress, with a checkpoint at that step (:class:`~sampler.training.callbacks.StopSignals`).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import io
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.experimental.callback import Callback
from lightning.pytorch.plugins.environments import LightningEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from torch.utils.data import Dataset

from sampler.energies.base import NonFiniteRewardError
from sampler.evaluation import plot_metric_curves
from sampler.training.callbacks import RunCallback, StopSignals, progress_bar, run_evaluation, samples_plot
from sampler.training.checkpointing import CheckpointError, find_resume_checkpoint, has_checkpoint
from sampler.training.config_check import ConfigError
from sampler.training.legacy import upgrade_config
from sampler.training.loggers import build_run_log
from sampler.training.manifest import build_manifest, now, write_atomic, write_json
from sampler.training.metrics_csv import COLUMNS, MetricsCSV
from sampler.training.module import NonFiniteLossError, SamplerModule
from sampler.training.tasks import build_module, check_task_config, task_of

log = logging.getLogger(__name__)


class RunDirError(RuntimeError):
    """A run directory this process cannot use: another process trains in it, or it cannot be written (read-only,
    full). The message is one line naming the directory or file and what to do."""


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT stopped the run after a completed step; a checkpoint at that step lets it resume.

    Attributes:
        signal: the signal's name (``"SIGTERM"``).
        step: the step the run stopped at (its checkpoint's).
        exit_status: ``128 + signal number``, the shell's convention for a process ended by a signal.
    """

    def __init__(self, sig, step: int):
        self.signal, self.step, self.exit_status = sig.name, int(step), 128 + int(sig)
        super().__init__(
            f"terminated by {self.signal} at step {self.step}; checkpoint saved — run the same command again to resume"
        )


#: Errors a user can fix; scripts print their one-line message instead of a traceback.
USER_ERRORS = (ConfigError, CheckpointError, RunDirError)
NUMERICAL_ERRORS = (NonFiniteRewardError, NonFiniteLossError)

#: Write failures reported as one line (``cannot write FILE: ...``) instead of a traceback.
_WRITE_ERRNOS = (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM)
_WRITE_WHERE = "choose a run directory you can write (paths.root=DIR or hydra.run.dir=DIR)"
_WRITE_HINTS = {
    errno.ENOSPC: "no space left on device; free some space and run the same command again to resume",
    errno.EDQUOT: "disk quota exceeded; free some space and run the same command again to resume",
}


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


def _record_defaults(cfg: DictConfig) -> None:
    """Settings left null to mean "the component's own" — ``model.t_scale`` (the energy's declared σ²) and
    ``train.lr_flow`` (the objective's flow lr) — written into the config as numbers, so that the run's saved config
    says what it trained with (and compares equal to a run that set them explicitly)."""
    if task_of(cfg) != "sampler":
        return  # other tasks record their own defaults when their config is checked
    if "model" in cfg and "t_scale" in cfg.model and cfg.model.t_scale is None:
        from sampler.energies.base import resolve_t_scale  # noqa: PLC0415
        from sampler.training.module import build_energy  # noqa: PLC0415 - module imports this file's neighbours

        with open_dict(cfg):
            cfg.model.t_scale = resolve_t_scale(None, build_energy(cfg))
    if "train" in cfg and cfg.train.get("lr_flow", 0.0) is None:
        from sampler.losses import flow_lr  # noqa: PLC0415

        with open_dict(cfg):
            cfg.train.lr_flow = flow_lr(cfg.loss.name)


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Train (or resume) the run described by ``cfg`` and evaluate it.

    Nothing is written into the run directory before this process holds its lock and has checked that the
    directory's config and checkpoint are this config's.

    Args:
        cfg: the composed config (``conf/config.yaml``).

    Returns:
        ``(metrics, objects)``: the final metrics of ``metrics.json``, and ``{"module", "trainer", "run_dir"}``.

    Raises:
        ConfigError, CheckpointError, RunDirError: one-line user errors (:data:`USER_ERRORS`).
        TrainingInterrupted: SIGTERM or SIGINT stopped the run (checkpoint saved; the same call resumes).
    """
    hydra_files = _hydra_job_files(cfg)  # the config as Hydra handed it over
    check_task_config(cfg)
    _record_defaults(cfg)
    run_dir = run_dir_of(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    try:
        with StopSignals() as stop:
            return _train_locked(cfg, run_dir, resolved, hydra_files, stop)
    except OSError as err:
        if not _is_write_error(err, run_dir):
            raise
        hint = _WRITE_HINTS.get(err.errno, f"{err.strerror}; {_WRITE_WHERE}")
        raise RunDirError(f"cannot write {err.filename}: {hint}") from err


def _is_write_error(err: OSError, run_dir: Path) -> bool:
    """Whether ``err`` is a failure to write the run directory (or to create it): a read-only or full file system
    anywhere, a permission denied there."""
    if err.filename is None or err.errno not in _WRITE_ERRNOS:
        return False
    if err.errno in (errno.EACCES, errno.EPERM):  # elsewhere it may be a file the run reads (an energy's data)
        where = Path(os.path.abspath(err.filename))
        run = Path(os.path.abspath(run_dir))
        return where == run or run in where.parents or where in run.parents
    return True


def _train_locked(cfg: DictConfig, run_dir: Path, resolved: dict, hydra_files, stop: StopSignals):
    run_dir.mkdir(parents=True, exist_ok=True)
    twin = None
    if cfg.checkpoint.resume and cfg.checkpoint.continue_unfinished and not has_checkpoint(run_dir / "checkpoints"):
        default_parent = (Path(str(cfg.paths.root)) / "runs").resolve()
        twin = find_unfinished_twin(run_dir, resolved) if run_dir.resolve().parent == default_parent else None
        if twin is not None:
            run_dir = _move_to(run_dir, twin)
            resolved["paths"]["run_dir"] = str(run_dir)
            hydra_files = None  # the twin keeps the record of the command that started it
    with RunLock(run_dir), _logging_to(run_dir / "train.log" if twin is not None else None):
        ckpt_path, ckpt = find_resume_checkpoint(run_dir / "checkpoints") if cfg.checkpoint.resume else (None, None)
        if ckpt_path is not None:
            _check_same_config(run_dir, resolved)
        elif cfg.checkpoint.resume and (done := _finished_metrics(run_dir, resolved, int(cfg.trainer.max_steps))):
            return done, {"module": None, "trainer": None, "run_dir": run_dir}
        return _train_in(cfg, run_dir, resolved, hydra_files, ckpt_path, ckpt, stop)


def _finished_metrics(run_dir: Path, resolved: dict, steps: int) -> dict | None:
    """The final metrics of a run of this config that finished in ``run_dir`` but kept no checkpoint (its small files
    were copied or committed elsewhere): re-running its command reports them instead of training it again."""
    path = run_dir / "metrics.json"
    if not path.is_file() or not (run_dir / "config_resolved.yaml").is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict) or metrics.get("step") != steps:
        return None
    _check_same_config(run_dir, resolved)
    log.info("%s already finished at step %d (metrics.json; no checkpoint to resume): nothing to train", run_dir, steps)
    return metrics


def _check_same_config(run_dir: Path, resolved: dict) -> None:
    """Resuming: the run directory's ``config_resolved.yaml`` must be this config (``paths`` aside)."""
    saved = run_dir / "config_resolved.yaml"
    if not saved.exists():
        return
    try:
        previous = OmegaConf.to_container(upgrade_config(OmegaConf.load(saved)), resolve=True)
        if not isinstance(previous, dict) or not previous:
            raise ValueError("not a mapping of config keys")
    except Exception as err:  # noqa: BLE001 - YAML, interpolation and type errors alike mean an unreadable file
        why = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(
            f"cannot check the config of {run_dir}: {saved.name} is unreadable ({why}); restore it, or delete it "
            "to resume with this command's config"
        ) from err
    changed = _changed_keys(previous, resolved, ignore=DISPLAY_ONLY)
    if changed:
        raise ConfigError(
            f"{run_dir} holds a run with a different config ({', '.join(changed[:5])}); "
            "resume with the same command or choose a new run directory"
        )


def _check_weights(module: SamplerModule, ckpt_path: Path, ckpt: dict) -> None:
    """Resuming: the checkpoint's weights must have this config's parameter names and shapes."""
    ours, theirs = module.state_dict(), ckpt["state_dict"]
    problems = [
        f"{k} has shape {list(theirs[k].shape)} there but {list(v.shape)} in this config's model"
        if k in theirs
        else f"it has no {k}"
        for k, v in ours.items()
        if k not in theirs or tuple(theirs[k].shape) != tuple(v.shape)
    ]
    problems += [f"it has {k}, which this config's model does not" for k in theirs if k not in ours]
    if problems:
        raise CheckpointError(
            f"checkpoint {ckpt_path} does not fit this config's model: {problems[0]}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
            + f"; resume with the config it was trained with, or delete {ckpt_path.parent} to start afresh"
        )


def _train_in(
    cfg: DictConfig,
    run_dir: Path,
    resolved: dict,
    hydra_files,
    ckpt_path: Path | None,
    ckpt: dict | None,
    stop: StopSignals,
) -> tuple[dict, dict]:
    _quiet_lightning()
    L.seed_everything(int(cfg.seed), workers=False, verbose=False)
    module = build_module(cfg)
    if ckpt is not None:
        _check_weights(module, ckpt_path, ckpt)
    accelerator = cfg.trainer.accelerator
    device = (
        "cuda" if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()) else "cpu"
    )

    # The run's record, written now that this process owns the directory and its config and checkpoint fit.
    if hydra_files is not None:
        _write_hydra_job_files(*hydra_files)
    write_atomic(run_dir / "config_resolved.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)).encode())
    manifest_path = run_dir / "manifest.json"
    if ckpt_path is None:
        manifest = build_manifest(int(cfg.seed), device)
    else:
        manifest = _resumed_manifest(manifest_path, int(cfg.seed), device, ckpt_path, int(ckpt["global_step"]))
    write_json(manifest_path, manifest)

    csv = MetricsCSV(run_dir / "metrics.csv", getattr(module, "csv_columns", COLUMNS))
    if ckpt_path is None:
        csv.reset()
    else:
        csv.truncate(int(ckpt["global_step"]))
        log.info("resuming from %s at step %d", ckpt_path, int(ckpt["global_step"]))
    runlog = build_run_log(cfg, run_dir, csv, None if ckpt_path is None else int(ckpt["global_step"]))
    ok = False
    try:
        final, trainer, module = _fit_and_evaluate(cfg, run_dir, module, runlog, ckpt_path, stop)
        ok = True
    except TrainingInterrupted as stopped:
        manifest["interrupted"] = {"signal": stopped.signal, "step": stopped.step, "time": now()}
        write_json(manifest_path, manifest)
        raise
    finally:
        runlog.close(ok)
    manifest["end_time"] = now()
    write_json(manifest_path, manifest)
    return final, {"module": module, "trainer": trainer, "run_dir": run_dir}


def _resumed_manifest(path: Path, seed: int, device: str, ckpt_path: Path, step: int) -> dict:
    """The run's manifest with this resume recorded; rebuilt (and saying so) when it is missing or unreadable."""
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        why = "missing" if isinstance(err, FileNotFoundError) else f"unreadable ({type(err).__name__})"
        log.warning("%s is %s: rebuilding it (start time and earlier resumes are lost); resuming", path, why)
        manifest = {**build_manifest(seed, device), "start_time": None}
        manifest["rebuilt"] = {"time": now(), "reason": f"{path.name} was {why}"}
    resume = {"time": now(), "from_step": step, "checkpoint": ckpt_path.name}
    if isinstance(manifest.get("interrupted"), dict):
        resume["interrupted"] = manifest.pop("interrupted")  # the stop this resume continues from
    manifest.setdefault("resumes", []).append(resume)
    manifest["end_time"] = None
    return manifest


def _fit_and_evaluate(
    cfg: DictConfig, run_dir: Path, module: SamplerModule, runlog, ckpt_path: Path | None, stop: StopSignals
):
    """Train to ``trainer.max_steps`` (from ``ckpt_path`` if given), then the final evaluation and its files.

    Raises :class:`TrainingInterrupted` when a signal stopped training; a signal that comes once the final
    evaluation has begun lets the run finish.
    """
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
        stop,
    )
    trainer_kw = {
        k: v
        for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items()
        if k not in ("log_every_n_steps", "max_steps", "progress_every")
    }
    every = cfg.trainer.get("progress_every")  # lines when stdout is not a terminal (callbacks.progress_bar)
    progress = [progress_bar(steps, every)] if trainer_kw.get("enable_progress_bar", True) else []
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
        try:
            trainer.fit(
                module, train_dataloaders=loader, ckpt_path=str(ckpt_path) if ckpt_path else None, weights_only=True
            )
        except SIGTERMException:  # Lightning's own SIGTERM handler (before the callback reclaims the signal)
            if stop.received is None:
                raise

    step = int(trainer.global_step)
    if stop.received is not None:  # after a step (the callback checkpointed it) or after the last one
        raise TrainingInterrupted(*(callback.interrupted or (stop.received, step)))
    plot = samples_plot(run_dir, step, bool(cfg.eval.plots))
    metrics, samples = run_evaluation(module, step, int(cfg.eval.K), plot)
    runlog.append(step, "eval", metrics, replace=True)
    runlog.image("samples", plot, step)
    final = {k: float(v) for k, v in metrics.items() if k != "eval_s"}
    buffer = io.BytesIO()
    torch.save(samples, buffer)
    write_atomic(run_dir / "samples.pt", buffer.getvalue())
    write_json(run_dir / "metrics.json", final)
    if cfg.eval.plots:
        try:
            keys = getattr(module, "curve_keys", None)  # a task's or a target's own curves; None: ΔlogZ, W2, loss
            plot_metric_curves(
                run_dir / "metrics.csv", run_dir / "plots" / "metrics.png", **({"keys": keys} if keys else {})
            )
            runlog.image("metric_curves", run_dir / "plots" / "metrics.png", step)
        except Exception as err:  # noqa: BLE001 - a plot never kills a run
            log.warning("could not plot metric curves: %s", err)
    return final, trainer, module


class RunLock:
    """``run.lock``: an exclusive ``flock`` on this file while a process trains in a run directory.

    The kernel releases the lock when its holder dies, however it dies, so a lock file left behind never blocks a
    resume (a reused PID, a SLURM requeue onto another node). The file's content — pid, host, SLURM job, start
    time — only names the holder in the refusal message. The file is never removed: a process could lock the
    old file after another unlinked it and a third locked a new one, and both would train.

    A requeued SLURM job takes its run over from its own earlier incarnation (same ``SLURM_JOB_ID``, another
    ``SLURM_RESTART_COUNT``), whose lock may outlive it on a network file system until the lease of its dead
    node expires: the lock file is replaced by a new one (a new inode, unlocked) and that one is locked.

    Args:
        run_dir: the run directory (it must exist).
    """

    #: Attempts while the lock is briefly held by a probe (:func:`find_unfinished_twin`) or the file replaced.
    ATTEMPTS, PAUSE_S = 5, 0.05

    def __init__(self, run_dir: Path):
        self.path = run_dir / "run.lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, or raise :class:`RunDirError` naming the live holder."""
        me = _holder_record()
        for attempt in range(self.ATTEMPTS):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = _read_holder(self.path)
                if _is_earlier_incarnation(holder, me):
                    log.warning(
                        "taking over %s from an earlier run of SLURM job %s (pid %s on %s)",
                        self.path.parent,
                        me["slurm_job_id"],
                        holder.get("pid", "?"),
                        holder.get("host", "?"),
                    )
                    write_atomic(self.path, _holder_bytes(me))  # a new inode: the dead holder's lock stays behind
                    continue
                if attempt + 1 < self.ATTEMPTS:
                    time.sleep(self.PAUSE_S)
                    continue
                raise RunDirError(_busy_message(self.path.parent, holder)) from None
            except BaseException:
                os.close(fd)
                raise
            if not _same_file(fd, self.path):  # replaced between our open and our lock: lock the new one
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, _holder_bytes(me), 0)
            except OSError:
                pass  # the record only names the holder in a message; a full disk must not stop the run here
            self._fd = fd
            return
        raise RunDirError(f"could not lock {self.path}: it kept being replaced; is another process starting here?")

    def release(self) -> None:
        """Release the lock (closing the file releases it; the file stays)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _holder_record() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID") or None,
        "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT") or 0),
        "since": now(),
    }


def _holder_bytes(record: dict) -> bytes:
    return (json.dumps(record) + "\n").encode()


def _read_holder(path: Path) -> dict:
    """The holder's record; ``{}`` when unreadable (retried briefly: the holder writes it just after locking)."""
    for _ in range(RunLock.ATTEMPTS):
        try:
            record = json.loads(path.read_text())
            if isinstance(record, dict):
                return record
        except (OSError, ValueError):
            pass
        time.sleep(RunLock.PAUSE_S)
    return {}


def _is_earlier_incarnation(holder: dict, me: dict) -> bool:
    """Whether the holder is this SLURM job before a requeue: SLURM runs one incarnation of a job at a time."""
    job = me["slurm_job_id"]
    return (
        bool(job)
        and holder.get("slurm_job_id") == job
        and holder.get("slurm_restart_count") != me["slurm_restart_count"]
    )


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _busy_message(run_dir: Path, holder: dict) -> str:
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}{job}"
    return (
        f"another process is training in {run_dir} ({who}); wait for it to finish, stop it, "
        "or choose another run directory"
    )


def is_locked(run_dir: Path) -> bool:
    """Whether a live process holds ``run_dir``'s ``run.lock`` (tried without waiting; a lock file whose holder
    died, or that an earlier incarnation of this SLURM job left, does not count).

    Args:
        run_dir: a run directory.

    Returns:
        ``True`` when another process trains there, or when that cannot be told (an unreadable lock file).
    """
    path = run_dir / "run.lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return not _is_earlier_incarnation(_read_holder(path), _holder_record())
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


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
        if is_locked(other):
            continue
        try:
            previous = OmegaConf.to_container(upgrade_config(OmegaConf.load(saved)), resolve=True)
        except Exception:  # noqa: BLE001 - an unreadable config is not a twin
            continue
        if not _changed_keys(previous, resolved, ignore=DISPLAY_ONLY):
            return other
    return None


def _hydra_job_files(cfg: DictConfig) -> tuple[Path, dict[str, str]] | None:
    """``(directory, {name: text})`` of the job record Hydra writes (``.hydra/config.yaml``, ``hydra.yaml``,
    ``overrides.yaml``), with Hydra's own content; ``None`` outside a Hydra job, or when Hydra writes them itself.

    ``conf/hydra/default.yaml`` sets ``hydra.output_subdir: null`` so that Hydra does not write them before the
    task starts (over the record of a run that holds the directory); :func:`train` writes them once it holds the
    lock. They read as Hydra's own: ``output_subdir`` is ``.hydra`` in the saved ``hydra.yaml``.
    """
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return None
        hydra_cfg = copy.deepcopy(HydraConfig.instance().cfg)  # what Hydra's run_job saves as hydra.yaml
        hc = hydra_cfg.hydra
        if hc.output_subdir is not None or hc.runtime.output_dir is None:
            return None
        with read_write(hc), open_dict(hc):
            hc.output_subdir = ".hydra"
        files = {
            "config.yaml": OmegaConf.to_yaml(cfg),
            "hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
            "overrides.yaml": OmegaConf.to_yaml(hc.overrides.task),
        }
        return Path(str(hc.runtime.output_dir)) / ".hydra", files
    except Exception as err:  # noqa: BLE001 - a config without Hydra's node: no job record to write
        log.debug("no Hydra job record: %s", err)
        return None


def _write_hydra_job_files(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        write_atomic(directory / name, text.encode())


class WritableOutputDir(Callback):
    """Hydra callback (``conf/hydra/default.yaml``): check that the run's (or sweep's) directory can be created and
    written before Hydra creates it and opens its log file there, so a read-only or unwritable place is one line,
    ``error: cannot write DIR: Read-only file system`` (exit status 2), instead of Hydra's traceback."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, key: str) -> None:
        try:
            path = Path(str(OmegaConf.select(config, key)))
        except Exception:  # noqa: BLE001 - not resolvable here: Hydra reports it when it resolves the key
            return
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):  # no name in the directory (O_TMPFILE) where the system allows
                pass
        except OSError as err:
            where = Path(err.filename) if err.filename and Path(err.filename) in (path, *path.parents) else path
            print(f"error: cannot write {where}: {err.strerror}; {_WRITE_WHERE}", file=sys.stderr)
            sys.exit(2)


def _move_to(new_dir: Path, twin: Path) -> Path:
    """Continue in ``twin``: remove ``new_dir`` if it holds nothing but Hydra's own files (its log)."""
    log.info(
        "continuing the unfinished run in %s (same config; checkpoint.continue_unfinished=false starts afresh)", twin
    )
    if all(p.name in (".hydra", "train.log") for p in new_dir.iterdir()):
        shutil.rmtree(new_dir, ignore_errors=True)
    return twin


@contextlib.contextmanager
def _logging_to(log_file: Path | None):
    """Copy the log to ``log_file`` (a continued twin's ``train.log``) while the block runs."""
    if log_file is None:
        yield
        return
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


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


#: Keys that change where a run is or what it prints, not what it trains: resuming (or continuing an unfinished twin)
#: with a different value of them is the same run (a progress bar switched off for a log file, say).
DISPLAY_ONLY = ("paths", "trainer.enable_progress_bar", "trainer.progress_every")


def _changed_keys(a, b, ignore=(), prefix="") -> list[str]:
    """The dotted keys whose values differ between two config dicts, except those in ``ignore`` (dotted, any depth)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if f"{prefix}{k}" in ignore:
                continue
            out += _changed_keys(a.get(k), b.get(k), ignore, f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def main(cfg: DictConfig) -> dict:
    """Entry point for scripts: user errors become one line on stderr (exit status 2; 1 for numerical faults; 128 +
    the signal's number when SIGTERM/SIGINT stopped the run, as a shell reports a process killed by it)."""
    try:
        metrics, objects = train(cfg)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except NUMERICAL_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except TrainingInterrupted as stopped:
        print(f"error: {stopped}", file=sys.stderr)
        sys.exit(stopped.exit_status)
    print(f"run directory: {objects['run_dir']}")
    print(json.dumps(metrics, indent=2))
    return metrics

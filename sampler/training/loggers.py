"""Where a run's numbers go: ``metrics.csv`` always, plus W&B or TensorBoard (``logger=wandb|tensorboard``).

:class:`RunLog` is what the training loop writes to: ``append(step, kind, values)`` for a row of training or
evaluation metrics, ``image(tag, path, step)`` for a plot, ``close(ok)`` at the end. The CSV is the record the
other scripts read (summarize, diff, reproduce); the other sinks mirror it for people who like dashboards.
"""

from __future__ import annotations

import logging
import netrc
import os
import secrets
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from sampler.training.metrics_csv import MetricsCSV

log = logging.getLogger(__name__)

LOGGERS = ("csv", "wandb", "tensorboard")


class RunLog:
    """``metrics.csv`` plus any extra sinks; every sink sees the same rows."""

    def __init__(self, csv: MetricsCSV, sinks: list | None = None):
        self.csv, self.sinks = csv, list(sinks or [])

    def append(self, step: int, kind: str, values: dict, replace: bool = False) -> None:
        self.csv.append(step, kind, values, replace=replace)
        numbers = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for sink in self.sinks:
            sink.log(step, kind, numbers)

    def image(self, tag: str, path: Path | None, step: int) -> None:
        if path is None or not Path(path).exists():
            return
        for sink in self.sinks:
            sink.image(tag, Path(path), step)

    def close(self, ok: bool = True) -> None:
        for sink in self.sinks:
            try:
                sink.close(ok)
            except Exception as err:  # noqa: BLE001 - closing a dashboard never hides the run's own outcome
                log.warning("could not close the %s logger: %s", type(sink).__name__, err)


def hydra_context() -> tuple[str, dict[str, str]]:
    """``(override string without the seed, {group: choice})`` of the running Hydra job; empty outside one."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return "", {}
        hc = HydraConfig.get()
        overrides = str(hc.job.override_dirname or "")
        choices = {str(k): str(v) for k, v in hc.runtime.choices.items() if v is not None and not k.startswith("hydra")}
        return overrides, choices
    except Exception:  # noqa: BLE001 - missing Hydra context only means no group/tags
        return "", {}


def build_run_log(cfg: DictConfig, run_dir: Path, csv: MetricsCSV, resume_step: int | None) -> RunLog:
    """The run's :class:`RunLog` for ``cfg.logger.name`` (``resume_step``: the checkpoint step when resuming)."""
    name = str(cfg.logger.name)
    if name == "csv":
        return RunLog(csv)
    overrides, choices = hydra_context()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if name == "wandb":
        return RunLog(csv, [WandbSink(cfg.logger, run_dir, resolved, overrides, choices, int(cfg.seed))])
    if name == "tensorboard":
        return RunLog(csv, [TensorBoardSink(cfg.logger, run_dir, resolved, resume_step)])
    raise ValueError(f"logger.name must be one of {', '.join(LOGGERS)} (got {name!r})")


def wandb_api_key_configured() -> bool:
    """True when W&B could log online: ``WANDB_API_KEY`` set, or a ``~/.netrc`` entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode(requested: str) -> tuple[str, str]:
    """``(mode, why)`` for ``logger.mode``: ``auto`` is online with an API key and offline without one; a
    ``WANDB_MODE`` already in the environment wins over ``auto``."""
    if requested != "auto":
        return requested, f"logger.mode={requested}"
    if os.environ.get("WANDB_MODE"):
        mode = os.environ["WANDB_MODE"]
        return ("offline" if mode == "dryrun" else mode), f"WANDB_MODE={mode}"
    if wandb_api_key_configured():
        return "online", "API key configured"
    return "offline", "no API key configured"


class WandbSink:
    """One W&B run per run directory (its id is kept in ``wandb/run_id``, so a resumed run continues it).

    Grouped by the override string without the seed, tagged with the Hydra choices, config = the resolved config.
    Files go to ``<run_dir>/wandb/``; offline runs upload later with ``wandb sync <run_dir>/wandb/offline-run-*``.
    """

    def __init__(self, lcfg: DictConfig, run_dir: Path, resolved: dict, overrides: str, choices: dict, seed: int):
        import wandb

        self.wandb = wandb
        mode, why = wandb_mode(str(lcfg.mode))
        if mode not in ("online", "offline", "disabled"):
            raise ValueError(f"logger.mode must be auto, online, offline or disabled (got {mode!r})")
        root = run_dir / "wandb"
        root.mkdir(parents=True, exist_ok=True)
        id_file = root / "run_id"
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
        group = lcfg.group or overrides or "default"
        tags = list(lcfg.tags or []) + [f"{k}={v}"[:64] for k, v in sorted(choices.items())]
        name = lcfg.run_name or f"{overrides or 'default'}/seed={seed}"
        self._old_mode = os.environ.get("WANDB_MODE")
        os.environ["WANDB_MODE"] = mode  # not wandb.init(mode=...) alone: see DESIGN.md, W&B pitfalls
        self.run = wandb.init(
            project=str(lcfg.project),
            entity=lcfg.entity,
            dir=str(run_dir),
            id=run_id,
            resume="allow",
            group=str(group)[:128],
            tags=tags,
            name=str(name)[:128],
            job_type=str(lcfg.job_type),
            config={**resolved, "hydra_choices": choices},
            mode=mode,
            settings=wandb.Settings(console="off", silent=True),
        )
        where = getattr(self.run, "dir", None) or str(root)
        hint = f"; upload later with `wandb sync {Path(where).parent}`" if mode == "offline" else ""
        log.info("W&B: %s (%s), group %s, files in %s%s", mode, why, group, Path(where).parent, hint)
        self.images = bool(lcfg.log_images)

    def log(self, step: int, kind: str, values: dict) -> None:
        if values:
            self.run.log({f"{kind}/{k}": v for k, v in values.items()}, step=int(step))

    def image(self, tag: str, path: Path, step: int) -> None:
        if self.images:
            self.run.log({tag: self.wandb.Image(str(path))}, step=int(step))

    def close(self, ok: bool) -> None:
        try:
            self.run.finish(exit_code=0 if ok else 1)
        finally:
            if self._old_mode is None:
                os.environ.pop("WANDB_MODE", None)
            else:
                os.environ["WANDB_MODE"] = self._old_mode


class TensorBoardSink:
    """Event files in ``<run_dir>/tensorboard`` (``tensorboard --logdir outputs``); a resume purges the events
    written after the checkpoint's step, as ``metrics.csv`` does."""

    def __init__(self, lcfg: DictConfig, run_dir: Path, resolved: dict, resume_step: int | None):
        from tensorboardX import SummaryWriter

        self.images = bool(lcfg.log_images)
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)
        if resume_step is None:
            text = OmegaConf.to_yaml(OmegaConf.create(resolved))
            self.writer.add_text("config", "```yaml\n" + text + "\n```", 0)
        log.info("TensorBoard: event files in %s", run_dir / "tensorboard")

    def log(self, step: int, kind: str, values: dict) -> None:
        for k, v in values.items():
            self.writer.add_scalar(f"{kind}/{k}", v, int(step))
        if kind == "eval":
            self.writer.flush()

    def image(self, tag: str, path: Path, step: int) -> None:
        if not self.images:
            return
        import matplotlib.image

        self.writer.add_image(tag, matplotlib.image.imread(str(path))[..., :3], int(step), dataformats="HWC")

    def close(self, ok: bool) -> None:
        self.writer.close()

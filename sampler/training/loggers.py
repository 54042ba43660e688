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
import socket
import threading
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from sampler.training.config_check import ConfigError
from sampler.training.metrics_csv import MetricsCSV

log = logging.getLogger(__name__)

LOGGERS = ("csv", "wandb", "tensorboard")
#: How long the reachability probe of the W&B server may take (wandb.init itself waits ~100 s before failing).
PROBE_TIMEOUT_S = 5.0


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


def wandb_base_url() -> str:
    """The W&B server: ``WANDB_BASE_URL``, or the public one."""
    return os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"


def wandb_server_unreachable(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the W&B server at ``url`` cannot be reached (a TCP connection to its host and port, or to the HTTP(S)
    proxy the environment names for it), or ``None`` when it answers.

    Args:
        url: the server's base URL.
        timeout_s: the longest the probe may take, name resolution included.

    Returns:
        ``None``, or a short reason such as ``"127.0.0.1:9 refused the connection"``.
    """
    parsed = urlparse(url)
    host, port = parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parsed.scheme)
    if proxy and host and not urllib.request.proxy_bypass(host):
        via = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = via.hostname or "", via.port or 80
    outcome: list[OSError | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            outcome.append(None)
        except OSError as err:
            outcome.append(err)

    # A thread, so that a hanging name lookup (which ignores the socket timeout) is bounded as well.
    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout_s + 0.5)
    if not outcome:
        return f"{host}:{port} did not answer within {timeout_s:.0f} s"
    err = outcome[0]
    if err is None:
        return None
    if isinstance(err, ConnectionRefusedError):
        return f"{host}:{port} refused the connection"
    if isinstance(err, socket.gaierror):
        return f"cannot resolve {host}"
    if isinstance(err, TimeoutError):
        return f"{host}:{port} did not answer within {timeout_s:.0f} s"
    return f"{host}:{port}: {err.strerror or err}"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or "no message"
    return f"{type(err).__name__}: {text[:200]}"


class WandbSink:
    """One W&B run per run directory (its id is kept in ``wandb/run_id``, so a resumed run continues it).

    Grouped by the override string without the seed, tagged with the Hydra choices, config = the resolved config.
    Files go to ``<run_dir>/wandb/``; offline runs upload later with ``wandb sync <run_dir>/wandb/offline-run-*``.

    Online runs first check that the W&B server answers (a compute node without internet would otherwise wait
    ~100 s in ``wandb.init`` and then fail): with ``logger.mode=auto`` an unreachable server, or a failing
    ``wandb.init``, means logging offline (one warning line); with ``logger.mode=online`` it is a
    :class:`ConfigError` before anything trains.
    """

    def __init__(self, lcfg: DictConfig, run_dir: Path, resolved: dict, overrides: str, choices: dict, seed: int):
        import wandb

        self.wandb = wandb
        mode, why = wandb_mode(str(lcfg.mode))
        if mode not in ("online", "offline", "disabled"):
            raise ValueError(f"logger.mode must be auto, online, offline or disabled (got {mode!r})")
        explicit = str(lcfg.mode) == "online"
        fell_back = False
        if mode == "online":
            url = wandb_base_url()
            reason = wandb_server_unreachable(url)
            if reason is not None:
                if explicit:
                    raise ConfigError(
                        f"logger.mode=online, but the W&B server {url} is unreachable ({reason}); "
                        "use logger.mode=auto or offline to log offline and upload later with `wandb sync`"
                    )
                mode, why, fell_back = "offline", f"{why}, but the W&B server {url} is unreachable: {reason}", True
        root = run_dir / "wandb"
        root.mkdir(parents=True, exist_ok=True)
        id_file = root / "run_id"
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
        group = lcfg.group or overrides or "default"
        tags = list(lcfg.tags or []) + [f"{k}={v}"[:64] for k, v in sorted(choices.items())]
        name = lcfg.run_name or f"{overrides or 'default'}/seed={seed}"
        init = {
            "project": str(lcfg.project),
            "entity": lcfg.entity,
            "dir": str(run_dir),
            "id": run_id,
            "resume": "allow",
            "group": str(group)[:128],
            "tags": tags,
            "name": str(name)[:128],
            "job_type": str(lcfg.job_type),
            "config": {**resolved, "hydra_choices": choices},
            "settings": wandb.Settings(console="off", silent=True),
        }
        self._old_mode = os.environ.get("WANDB_MODE")
        try:
            self.run = self._init(mode, init)
        except Exception as err:  # noqa: BLE001 - whatever wandb raises, the run either logs offline or stops in one line
            if mode != "online":
                raise
            if explicit:
                raise ConfigError(
                    f"logger.mode=online, but wandb.init failed ({_one_line(err)}); "
                    "use logger.mode=auto or offline to log offline and upload later with `wandb sync`"
                ) from err
            mode, why, fell_back = "offline", f"{why}, but wandb.init failed online: {_one_line(err)}", True
            self.run = self._init(mode, init)
        where = getattr(self.run, "dir", None) or str(root)
        hint = f"; upload later with `wandb sync {Path(where).parent}`" if mode == "offline" else ""
        level = logging.WARNING if fell_back else logging.INFO
        log.log(level, "W&B: %s (%s), group %s, files in %s%s", mode, why, group, Path(where).parent, hint)
        self.images = bool(lcfg.log_images)

    def _init(self, mode: str, init: dict):
        """``wandb.init`` in ``mode``; ``WANDB_MODE`` is set to it (and restored if the call fails)."""
        # In the environment too, not only as the argument: without an API key wandb.init fails at once unless
        # WANDB_MODE says offline.
        os.environ["WANDB_MODE"] = mode
        try:
            return self.wandb.init(mode=mode, **init)
        except BaseException:
            self._restore_mode()
            raise

    def _restore_mode(self) -> None:
        if self._old_mode is None:
            os.environ.pop("WANDB_MODE", None)
        else:
            os.environ["WANDB_MODE"] = self._old_mode

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
            self._restore_mode()


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

"""Check that a ``scripts/train.py`` command line composes, before Hydra starts: one line, not Hydra's message.

Hydra composes the config inside ``@hydra.main`` and reports a misspelt key (``model.hidden_dimm=3``) or an unknown
option (``loss=nonexistent``) in 5 to 14 lines. :func:`composition_error` composes the same config with the same
overrides first and turns the first error into ``error: <one line>``. For a ``-m`` sweep it composes the jobs
Hydra will compose: each value of every config-group sweep (``energy=gmm25,funnel``) appears in one composition,
the other sweeps (``seed=0,1,2``) at their first value, so an unknown option anywhere in the sweep stops it before
its first job trains.

Command lines with flags other than ``-m``/``--multirun``/``-r``/``--run`` (``--cfg``, ``--help``,
``--config-name``, ...) are left to Hydra.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

#: The config tree beside the package (an editable install).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
MULTIRUN_FLAGS = ("-m", "--multirun")
RUN_FLAGS = ("-r", "--run")
#: Lines of Hydra's messages that say nothing about the error.
_NOISE = ("Config search path", "provider=", "Set the environment variable HYDRA_FULL_ERROR", "See https://hydra.cc")


def composition_error(
    argv: list[str], config_dir: Path | str = CONF_DIR, config_name: str = "config", job_name: str = "train"
) -> str | None:
    """The one-line error for a command line whose config does not compose, or None when it composes.

    Args:
        argv: the command-line arguments after the script name (overrides, and ``-m`` for a sweep).
        config_dir: the primary config directory (the script's ``config_path``).
        config_name: the primary config (the script's ``config_name``).
        job_name: the script's name (Hydra's ``hydra.job.name``).

    Returns:
        ``"error: ..."`` (one line) when Hydra would fail to compose the config (or a job of the sweep); None when
        it composes, and for command lines this check leaves to Hydra.
    """
    flags = MULTIRUN_FLAGS + RUN_FLAGS
    if any(a.startswith("-") and a not in flags for a in argv):
        return None  # info flags (--cfg, --help, ...) and --config-path/--config-name forms: Hydra reports
    if not (Path(config_dir) / f"{config_name}.yaml").is_file():
        return None
    overrides = [a for a in argv if a not in flags]
    multirun = any(a in MULTIRUN_FLAGS for a in argv)

    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), job_name=job_name, version_base="1.3"):
            hydra = GlobalHydra.instance().hydra
            loader = hydra.config_loader
            parsed = OverridesParser.create(config_loader=loader).parse_overrides(overrides)
            if any(o.key_or_group == "hydra.mode" for o in parsed):
                return None  # the run mode set by an override: Hydra decides
            job = _first_job(parsed, loader.get_group_options) if multirun else overrides
            if isinstance(job, list):
                job = _null_group(parsed, loader.get_group_options) or job
            if not isinstance(job, list):
                return job and f"error: {job}"
            hydra.compose_config(config_name, job, run_mode=RunMode.RUN, from_shell=True, with_log_configuration=False)
    except (HydraException, OmegaConfBaseException) as err:
        return f"error: {describe(err, config_name)}"
    except Exception:  # noqa: BLE001 - not a composition error this check knows: Hydra reports it as it would anyway
        return None
    return None


def _first_job(parsed: list, group_options) -> list[str] | str | None:
    """The overrides of a sweep's first job (each sweep at its first value); a one-line problem (a value of a group
    sweep that is not an option of the group); or None when the sweep is not one the basic sweeper enumerates.

    ``group_options(name)`` lists the options of config group ``name`` (empty for a key that is not a group).
    """
    job = []
    for o in parsed:
        if not o.is_sweep_override():
            job.append(o.input_line)
            continue
        if o.is_hydra_override():
            return f"{o.input_line}: Hydra cannot sweep over its own configuration (hydra.*); give it one value"
        if not o.is_discrete_sweep():
            return None  # interval() sweeps are for other sweepers
        values = list(o.sweep_string_iterator())
        if not values:
            return None
        options = group_options(o.key_or_group)
        unknown = [v for v in values if options and v not in options]
        if unknown:
            return f"{o.key_or_group}={unknown[0]} is not an option; choose one of: {', '.join(options)}"
        job.append(f"{o.get_key_element()}={values[0]}")
    return job


def _null_group(parsed: list, group_options) -> str | None:
    """``launcher=null``: Hydra fails with a traceback (a group override must name an option); one line instead."""
    for o in parsed:
        if o.is_sweep_override() or o.is_delete() or o.value() is not None:
            continue
        options = group_options(o.key_or_group)
        if options:
            return (
                f"{o.input_line}: a config group takes one of its options ({', '.join(options)}); "
                f"to drop the group write ~{o.key_or_group}"
            )
    return None


def describe(err: BaseException, config_name: str = "config") -> str:
    """One line for a Hydra composition error: the override, what is wrong, and what to write instead.

    Args:
        err: what composing raised (a ``HydraException`` or an OmegaConf error).
        config_name: the primary config, whose own defaults list is the command line's.

    Returns:
        The message, without ``error:``.
    """
    from hydra.errors import MissingConfigException, OverrideParseException

    text = str(err)
    if isinstance(err, OverrideParseException):
        return f"cannot parse the override {err.override}: {_first_line(err.message)}"
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and err.options is not None:
        group, _, option = err.missing_cfg_file.rpartition("/")
        where = re.match(r"In '([^']+)':", text)
        chosen_in = where.group(1) if where and where.group(1) not in (config_name, "hydra/config") else None
        note = f" (chosen in conf/{chosen_in}.yaml)" if chosen_in else ""
        return f"{group}={option} is not an option{note}; choose one of: {', '.join(err.options)}"
    if m := re.match(r"Could not override '([^']+)'\.\nTo append to your config use (\S+)", text):
        key, add = m.groups()
        guess = _close_key(err.__cause__, key)
        hint = f"; did you mean {guess}?" if guess else ""
        return f"{key} is not a config key{hint} (to add a new key write {add})"
    if m := re.match(
        r"Could not append to config\. An item is already at '([^']+)'\.\nEither remove \+ prefix: '(.+)'", text
    ):
        key, plain = m.groups()
        return f"+{plain} adds {key}, which exists: write {plain} to set it"
    if m := re.match(r"Could not override '(data|ebm/net)'\. No match in the defaults list", text):
        return f"{m.group(1)}= selects a group of energy-based models: add task=ebm"
    if m := re.match(r"Ambiguous value for argument '([^']+)'", text):
        line = m.group(1)
        key, _, value = line.partition("=")
        return f"{line} has several values: add -m to run one job per value, or write {key}=[{value}] for a list"
    if m := re.match(r"Sweep parameters '([^']+)' requires --multirun", text):
        return f"{m.group(1)} is a sweep: add -m to run one job per value"
    message = _first_line(text)
    cause = err.__cause__
    if cause is not None and _first_line(str(cause)) and _first_line(str(cause)) not in message:
        message = f"{message}: {_first_line(str(cause))}"
    return message


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    meaningful = [line for line in lines if not line.startswith(_NOISE)]
    return (meaningful or lines or [""])[0]


def _close_key(cause: BaseException | None, key: str) -> str | None:
    """The existing key closest to the misspelt part of ``key`` (``model.hidden_dimm`` → ``model.hidden_dim``), from
    the OmegaConf error's parent node; None without a close one."""
    name, full_key, parent = (getattr(cause, a, None) for a in ("key", "full_key", "parent_node"))
    if not isinstance(name, str) or not isinstance(full_key, str) or parent is None or not full_key.endswith(name):
        return None
    try:
        siblings = [str(k) for k in parent.keys() if k != "hydra"]
    except Exception:  # noqa: BLE001 - not a mapping: no guess
        return None
    match = difflib.get_close_matches(name, siblings, n=1)
    if not match:
        return None
    return full_key[: len(full_key) - len(name)] + match[0] + key[len(full_key) :]

"""Run directories on disk: recognise and load one, find all of them under a sweep, group them by configuration.

A *run directory* holds ``config_resolved.yaml`` (written by ``train(cfg)`` before the first step); it is
*finished* once ``metrics.json`` exists. A Hydra job directory with only ``.hydra/config.yaml`` is a run that
has not saved its config yet (*pending*). A *sweep* is any directory with run directories below it, however
deeply nested (``outputs/multiruns/<time>/<overrides without the seed>/seed=N/``).

Two runs have the same *configuration* when their resolved configs are equal without ``seed`` and ``paths.*``:
the seeds of one configuration are the rows a summary averages over.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

CONFIG = "config_resolved.yaml"
METRICS = "metrics.json"
MANIFEST = "manifest.json"
METRICS_CSV = "metrics.csv"
HYDRA_DIR = ".hydra"
#: What ``scripts/reproduce.py`` leaves in a reproduction's directory (besides the run itself).
REPRODUCTION_REPORT = "reproduce.json"
REPRODUCTION_TAG = "_repro_"

#: Top-level config keys that do not make a configuration: the seed, and where the run was written.
NOT_CONFIGURATION = ("seed", "paths")
#: Override keys left out of a configuration's label (Hydra's ``override_dirname`` excludes the same).
LABEL_EXCLUDED = ("seed", "launcher", "paths.root", "paths.run_dir")


class NotARunError(ValueError):
    """A path that is not a run directory (or holds none); the message is one line naming the path."""


@dataclass
class Run:
    """One run directory, read from disk.

    Attributes:
        path: the run directory.
        config: the resolved config (``config_resolved.yaml``) as plain containers; ``None`` while pending.
        metrics: the final metrics (``metrics.json``); ``None`` while the run is unfinished.
        manifest: ``manifest.json``, or ``None`` if absent.
        overrides: Hydra's command-line overrides (``.hydra/overrides.yaml``), or ``None`` outside Hydra.
        choices: Hydra's config-group choices (``.hydra/hydra.yaml`` runtime.choices), or ``None``.
    """

    path: Path
    config: dict | None
    metrics: dict | None = None
    manifest: dict | None = None
    overrides: list[str] | None = None
    choices: dict | None = None

    @property
    def finished(self) -> bool:
        return self.metrics is not None

    @property
    def seed(self) -> Any:
        return None if self.config is None else self.config.get("seed")


@dataclass
class Group:
    """The runs of one configuration (its seeds).

    Attributes:
        label: short name of the configuration: its overrides without the seed, or the keys where it differs
            from the other groups.
        config: the resolved config without ``seed`` and ``paths``.
        runs: every run of the configuration, finished or not, sorted by path.
    """

    label: str
    config: dict
    runs: list[Run] = field(default_factory=list)

    @property
    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.finished]

    @property
    def n_unfinished(self) -> int:
        return len(self.runs) - len(self.finished)


def is_timing(key: str) -> bool:
    """Whether a ``metrics.json`` key is a duration in seconds (``eval_s``): never averaged or compared."""
    return key.endswith("_s")


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run directory (``config_resolved.yaml``) or a pending Hydra job (``.hydra/``)."""
    return (path / CONFIG).is_file() or (path / HYDRA_DIR / "config.yaml").is_file()


def is_reproduction(path: Path) -> bool:
    """Whether ``path`` is a reproduction made by ``scripts/reproduce.py`` (not a seed of its sweep)."""
    return REPRODUCTION_TAG in path.name or (path / REPRODUCTION_REPORT).is_file()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent, or being written by a live run: treated as not there yet


def _read_yaml(path: Path) -> Any:
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # noqa: BLE001 - a missing or unreadable file is simply not there
        return None


def _read_config(path: Path) -> Any:
    """A saved run config in today's layout (older versions' keys translated), so runs of different versions diff
    only where their settings differ."""
    from sampler.training.legacy import upgrade_config  # noqa: PLC0415 - training imports are heavy

    try:
        return OmegaConf.to_container(upgrade_config(OmegaConf.load(path)), resolve=False)
    except Exception:  # noqa: BLE001 - a missing or unreadable file is simply not there
        return None


def load_run(path: str | Path) -> Run:
    """Read the run directory ``path``.

    Raises:
        NotARunError: ``path`` is not a run directory.
    """
    path = Path(path)
    if not path.is_dir():
        why = "is a file" if path.exists() else "does not exist"
        raise NotARunError(f"not a run directory: {path} {why}")
    if not is_run_dir(path):
        raise NotARunError(f"not a run directory: {path} (no {CONFIG})")
    config = _read_config(path / CONFIG) if (path / CONFIG).is_file() else None
    hydra = _read_yaml(path / HYDRA_DIR / "hydra.yaml")
    choices = hydra.get("hydra", {}).get("runtime", {}).get("choices") if isinstance(hydra, dict) else None
    overrides = _read_yaml(path / HYDRA_DIR / "overrides.yaml")
    return Run(
        path=path,
        config=config if isinstance(config, dict) else None,
        metrics=_read_json(path / METRICS),
        manifest=_read_json(path / MANIFEST),
        overrides=[str(o) for o in overrides] if isinstance(overrides, list) else None,
        choices=dict(choices) if isinstance(choices, dict) else None,
    )


def find_run_dirs(root: str | Path, reproductions: bool = False) -> list[Path]:
    """Every run directory at or below ``root`` (not looking inside run directories), sorted by path.

    Args:
        root: a run directory or a sweep (any directory with run directories below it).
        reproductions: include the directories of ``scripts/reproduce.py``.

    Raises:
        NotARunError: ``root`` is not a directory or holds no run directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotARunError(f"not a run or sweep directory: {root}" + ("" if root.exists() else " does not exist"))
    found = []
    for here, dirs, _ in os.walk(root):
        here = Path(here)
        if is_run_dir(here):
            dirs[:] = []
            if reproductions or here == root or not is_reproduction(here):
                found.append(here)
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    if not found:
        raise NotARunError(f"not a run or sweep directory: {root} (no {CONFIG} at or below it)")
    return sorted(found)


def configuration(config: dict) -> dict:
    """The configuration of a resolved config: everything but ``seed`` and ``paths``."""
    return {k: v for k, v in config.items() if k not in NOT_CONFIGURATION}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b.c": leaf}``; lists and scalars are leaves, an empty dict is a leaf ``{}``."""
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): tree}


def group_runs(runs: list[Run]) -> tuple[list[Group], list[Run]]:
    """Group runs by configuration and label the groups.

    Args:
        runs: loaded runs (any order).

    Returns:
        ``(groups, pending)``: the groups sorted by label, and the runs without a config yet (which cannot be
        placed in a group).
    """
    by_key: dict[str, Group] = {}
    pending = []
    for run in sorted(runs, key=lambda r: str(r.path)):
        if run.config is None:
            pending.append(run)
            continue
        conf = configuration(run.config)
        key = json.dumps(conf, sort_keys=True, default=str)
        by_key.setdefault(key, Group(label="", config=conf)).runs.append(run)
    groups = list(by_key.values())
    for group, label in zip(groups, _labels(groups)):
        group.label = label
    groups.sort(key=lambda g: (g.label, str(g.runs[0].path)))
    return groups, pending


def label_overrides(overrides: list[str]) -> list[str]:
    """Hydra overrides that name a configuration: without the seed, the launcher, ``paths.*`` and ``hydra.*``."""
    kept = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key in LABEL_EXCLUDED or key.startswith("hydra.") or key.startswith("hydra/"):
            continue
        kept.append(o)
    return kept


def common_overrides(groups: list[Group]) -> list[str]:
    """Overrides every group was started with (said once above a table instead of in every label)."""
    lists = [label_overrides(g.runs[0].overrides) for g in groups if g.runs[0].overrides is not None]
    if len(lists) != len(groups) or len(groups) < 2:
        return []
    return [o for o in lists[0] if all(o in other for other in lists[1:])]


def _labels(groups: list[Group]) -> list[str]:
    """Each group's overrides without the seed (and without the overrides all groups share); where a group has
    no Hydra overrides or two labels would coincide, the config keys that differ between the groups."""
    common = set(common_overrides(groups))
    labels = []
    for g in groups:
        overrides = g.runs[0].overrides
        if overrides is None:
            labels = None
            break
        labels.append(" ".join(o for o in label_overrides(overrides) if o not in common) or "(defaults)")
    if labels is not None and len(set(labels)) == len(labels):
        return labels
    flat = [flatten(g.config) for g in groups]
    keys = sorted({k for f in flat for k in f})
    differing = [k for k in keys if len({json.dumps(f.get(k, "<absent>"), default=str) for f in flat}) > 1]
    return [" ".join(f"{k}={format_value(f.get(k, '<absent>'))}" for k in differing) or "(all runs)" for f in flat]


def format_value(value: Any) -> str:
    """A config value as a user would type it: ``tb``, ``0.1``, ``null``, ``[2, 4]``, ``true``."""
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)

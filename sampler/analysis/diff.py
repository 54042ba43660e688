"""What differs between two runs: config keys (dotted paths, old → new), Hydra group choices, the environment of
``manifest.json`` (code version, packages, device) and the final metrics (A, B, B − A).

Configs are compared without ``paths.run_dir`` (every run has its own); other ``paths.*`` keys are listed apart,
since where a run was written does not change what it computes. Two runs have equal configs when nothing but
``paths.*`` differs — a different ``seed`` is a difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sampler.analysis.runs import Run, flatten, format_value

#: ``manifest.json`` keys that describe the environment (``packages.*`` too); times, command, host-independent
#: bookkeeping (seed, SLURM job id, resumes) are per-run by nature and not compared.
ENV_KEYS = ("git_commit", "git_dirty", "git_diff_sha256", "device", "torch_threads", "python", "platform", "host")
IGNORED_CONFIG_KEYS = ("paths.run_dir",)


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


ABSENT = _Absent()


@dataclass
class Change:
    """One key whose value differs: ``old`` (run A) → ``new`` (run B); :data:`ABSENT` where a run lacks it."""

    key: str
    old: Any
    new: Any


@dataclass
class RunDiff:
    """The differences between run A and run B (see the module docstring)."""

    config: list[Change] = field(default_factory=list)
    paths: list[Change] = field(default_factory=list)
    choices: list[Change] = field(default_factory=list)
    environment: list[Change] = field(default_factory=list)
    metrics: list[Change] = field(default_factory=list)  # every final metric, equal or not
    notes: list[str] = field(default_factory=list)

    @property
    def configs_equal(self) -> bool:
        return not self.config


def changes(a: dict, b: dict) -> list[Change]:
    """The keys of two flat dicts whose values differ (a key only one has counts), in sorted order."""
    out = []
    for key in sorted(set(a) | set(b)):
        old, new = a.get(key, ABSENT), b.get(key, ABSENT)
        if old is ABSENT or new is ABSENT or not _same(old, new):
            out.append(Change(key, old, new))
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return isinstance(a, bool) == isinstance(b, bool) and a == b  # true ≠ 1


def config_changes(a: dict, b: dict) -> tuple[list[Change], list[Change]]:
    """``(config, paths)``: differing keys of two resolved configs outside ``paths``, and inside it (without
    ``paths.run_dir``)."""
    diff = [c for c in changes(flatten(a), flatten(b)) if c.key not in IGNORED_CONFIG_KEYS]
    in_paths = [c for c in diff if c.key == "paths" or c.key.startswith("paths.")]
    return [c for c in diff if c not in in_paths], in_paths


def environment(manifest: dict) -> dict:
    """The environment part of a manifest, flat: :data:`ENV_KEYS` and ``packages.<name>``."""
    env = {k: manifest[k] for k in ENV_KEYS if k in manifest}
    for name, version in (manifest.get("packages") or {}).items():
        env[f"packages.{name}"] = version
    return env


def diff_runs(a: Run, b: Run) -> RunDiff:
    """Compare two loaded runs.

    Args:
        a: run A (the "old" side).
        b: run B (the "new" side).

    Returns:
        A :class:`RunDiff`; ``configs_equal`` is what ``diff_runs.py`` turns into its exit status.

    Raises:
        ValueError: a run has no saved config yet.
    """
    for run in (a, b):
        if run.config is None:
            raise ValueError(f"{run.path} has not saved its config yet (no config_resolved.yaml)")
    d = RunDiff()
    d.config, d.paths = config_changes(a.config, b.config)
    if a.choices is not None and b.choices is not None:
        pick = lambda c: {k: v for k, v in c.items() if not k.startswith("hydra/")}  # noqa: E731
        d.choices = changes(pick(a.choices), pick(b.choices))
    if a.manifest is not None and b.manifest is not None:
        d.environment = changes(environment(a.manifest), environment(b.manifest))
    else:
        d.notes += [f"{side}: no manifest.json" for side, r in (("A", a), ("B", b)) if r.manifest is None]
    ma, mb = a.metrics or {}, b.metrics or {}
    d.metrics = [Change(k, ma.get(k, ABSENT), mb.get(k, ABSENT)) for k in dict.fromkeys([*ma, *mb])]
    d.notes += [f"{side}: unfinished (no metrics.json)" for side, r in (("A", a), ("B", b)) if r.metrics is None]
    return d


def _value(v: Any) -> str:
    return "(absent)" if v is ABSENT else format_value(v)


def _number(v: Any) -> str:
    if v is ABSENT:
        return "—"
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _delta(old: Any, new: Any) -> str:
    if isinstance(old, (int, float)) and isinstance(new, (int, float)) and not isinstance(old, bool):
        return f"{new - old:+.6g}" if new != old else "0"
    return "—"


def _section(title: str, items: list[Change]) -> list[str]:
    width = max(len(c.key) for c in items)
    return [title] + [f"  {c.key:<{width}}  {_value(c.old)} → {_value(c.new)}" for c in items]


def format_diff(d: RunDiff, name_a: str, name_b: str) -> str:
    """The diff as text for people: config, Hydra choices, paths, environment, then the metrics table."""
    lines = [f"A: {name_a}", f"B: {name_b}", ""]
    if d.config:
        n = len(d.config)
        lines += _section(f"config: {n} key{'s differ' if n != 1 else ' differs'} (A → B)", d.config)
    else:
        lines.append("config: identical (paths.run_dir aside)")
    if d.choices:
        lines += _section("hydra choices (A → B)", d.choices)
    if d.paths:
        lines += _section("paths (where the runs were written; not a config difference)", d.paths)
    if d.environment:
        lines += _section("environment, manifest.json (A → B)", d.environment)
    elif not any(n.endswith("no manifest.json") for n in d.notes):
        lines.append("environment: identical (git commit, dirty diff, packages, python, device, threads, host)")
    lines += [f"note: {n}" for n in d.notes]
    if d.metrics:
        head = ("metric", "A", "B", "B−A")
        rows = [(c.key, _number(c.old), _number(c.new), _delta(c.old, c.new)) for c in d.metrics]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
        lines += ["final metrics (metrics.json)"] + [_row(r, widths) for r in [head, *rows]]
    return "\n".join(line.rstrip() for line in lines)


def _row(cells: tuple[str, ...], widths: list[int]) -> str:
    return "  " + "  ".join(f"{x:<{w}}" if i == 0 else f"{x:>{w}}" for i, (x, w) in enumerate(zip(cells, widths)))

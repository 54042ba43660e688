"""A sweep as one table: mean ± std over seeds of every final metric, per configuration (Markdown, CSV, LaTeX),
and a metric's training curves per configuration with a band over seeds.

The std is the sample standard deviation over seeds (n − 1 in the denominator); with one seed only the mean is
shown. Unfinished runs are counted, never averaged.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sampler.analysis.runs import METRICS_CSV, Group, common_overrides, is_timing

#: Keys of ``metrics.json`` that describe the evaluation rather than measure the sampler; left out of the default
#: columns (``--metrics`` can still ask for them). Keys ending in ``_s`` are timings and are left out too.
BOOKKEEPING = ("step", "eval_K")
FORMATS = ("md", "csv", "latex")


@dataclass
class Stat:
    """Mean and sample std over the seeds that report a metric (``std`` is ``None`` for fewer than 2)."""

    mean: float
    std: float | None
    n: int


@dataclass
class Row:
    label: str
    n: int
    n_unfinished: int
    stats: dict[str, Stat | None]


def default_metrics(groups: Sequence[Group]) -> list[str]:
    """Every final metric of the finished runs, in the order ``metrics.json`` lists them, without bookkeeping."""
    keys: dict[str, None] = {}
    for g in groups:
        for run in g.finished:
            keys.update(dict.fromkeys(k for k in run.metrics if k not in BOOKKEEPING and not is_timing(k)))
    return list(keys)


def available_metrics(groups: Sequence[Group]) -> list[str]:
    keys: dict[str, None] = {}
    for g in groups:
        for run in g.finished:
            keys.update(dict.fromkeys(run.metrics))
    return list(keys)


def stat(values: Sequence[float]) -> Stat | None:
    """Mean and sample std (n − 1) of ``values``; ``None`` when there are none."""
    if not values:
        return None
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stat(mean, std, len(values))


def summary_rows(groups: Sequence[Group], metrics: Sequence[str]) -> list[Row]:
    """One row per group: the statistics of each metric over its finished runs."""
    rows = []
    for g in groups:
        done = g.finished
        stats = {m: stat([float(r.metrics[m]) for r in done if _is_number(r.metrics.get(m))]) for m in metrics}
        rows.append(Row(g.label, len(done), g.n_unfinished, stats))
    return rows


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_stat(s: Stat | None, decimals: int, pm: str = " ± ") -> str:
    """``mean ± std`` with ``decimals`` decimals; just the mean for one seed; ``—`` for none."""
    if s is None:
        return "—"
    text = f"{s.mean:.{decimals}f}"
    if s.std is not None:
        text += f"{pm}{s.std:.{decimals}f}"
    return text


def _stat_cell(s: Stat | None, n: int, decimals: int, pm: str) -> str:
    text = format_stat(s, decimals, pm)
    return f"{text} (n={s.n})" if s is not None and s.n != n else text  # a metric not every seed reported


def to_markdown(rows: Sequence[Row], metrics: Sequence[str], decimals: int = 3) -> str:
    """A GitHub-Markdown table: configuration, n, [unfinished,] one ``mean ± std`` column per metric."""
    show_unfinished = any(r.n_unfinished for r in rows)
    head = ["configuration", "n"] + (["unfinished"] if show_unfinished else []) + list(metrics)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in rows:
        cells = [r.label.replace("|", "\\|"), str(r.n)] + ([str(r.n_unfinished)] if show_unfinished else [])
        cells += [_stat_cell(r.stats[m], r.n, decimals, " ± ") for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_csv(rows: Sequence[Row], metrics: Sequence[str]) -> str:
    """CSV with full-precision numbers: ``configuration,n,[unfinished,]<m>_mean,<m>_std,...`` (std empty for n=1)."""
    show_unfinished = any(r.n_unfinished for r in rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["configuration", "n"] + (["unfinished"] if show_unfinished else [])
    w.writerow(head + [f"{m}_{s}" for m in metrics for s in ("mean", "std")])
    for r in rows:
        cells: list = [r.label, r.n] + ([r.n_unfinished] if show_unfinished else [])
        for m in metrics:
            s = r.stats[m]
            cells += ["", ""] if s is None else [repr(s.mean), "" if s.std is None else repr(s.std)]
        w.writerow(cells)
    return buf.getvalue().rstrip("\n")


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in text)


def to_latex(rows: Sequence[Row], metrics: Sequence[str], decimals: int = 3) -> str:
    """A ``tabular`` (booktabs rules) with ``$mean \\pm std$`` cells."""
    show_unfinished = any(r.n_unfinished for r in rows)
    head = ["configuration", "n"] + (["unfinished"] if show_unfinished else []) + list(metrics)
    lines = [
        r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in head) + r" \\",
        r"\midrule",
    ]
    for r in rows:
        cells = [latex_escape(r.label), str(r.n)] + ([str(r.n_unfinished)] if show_unfinished else [])
        for m in metrics:
            s = r.stats[m]
            text = "--" if s is None else "$" + format_stat(s, decimals, r" \pm ") + "$"
            cells.append(text + (f" ($n={s.n}$)" if s is not None and s.n != r.n else ""))
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def format_table(groups: Sequence[Group], metrics: Sequence[str], fmt: str = "md", decimals: int = 3) -> str:
    """The summary table of ``groups`` in ``fmt`` (``md``, ``csv`` or ``latex``)."""
    rows = summary_rows(groups, metrics)
    if fmt == "md":
        return to_markdown(rows, metrics, decimals)
    if fmt == "csv":
        return to_csv(rows, metrics)
    if fmt == "latex":
        return to_latex(rows, metrics, decimals)
    raise ValueError(f"format must be one of {', '.join(FORMATS)} (got {fmt})")


def describe(groups: Sequence[Group], n_pending: int = 0, n_skipped: int = 0) -> str:
    """One line about the sweep: runs, configurations, unfinished, and the overrides all configurations share."""
    runs = sum(len(g.runs) for g in groups)
    unfinished = sum(g.n_unfinished for g in groups)
    text = f"{runs} run{'s' * (runs != 1)} in {len(groups)} configuration{'s' * (len(groups) != 1)}"
    if unfinished:
        text += f", {unfinished} unfinished"
    if n_pending:
        text += f", {n_pending} not started (no config_resolved.yaml yet)"
    if n_skipped:
        text += f", {n_skipped} reproduction{'s' * (n_skipped != 1)} left out"
    common = common_overrides(list(groups))
    if common:
        text += "; common overrides: " + " ".join(common)
    return text


def read_curve(path: Path, metric: str) -> dict[float, float]:
    """``{step: value}`` of ``metric`` from a ``metrics.csv`` (rows where it is empty are skipped)."""
    out: dict[float, float] = {}
    try:
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                value, step = (row.get(metric) or "").strip(), (row.get("step") or "").strip()
                if value and step:
                    out[float(step)] = float(value)
    except FileNotFoundError:
        pass
    return out


def plot_curves(groups: Sequence[Group], metric: str, out: str | Path, title: str | None = None) -> Path:
    """Plot ``metric`` against the step for every configuration: the mean over seeds as a line, mean ± std over
    seeds as a band (only at steps every seed has reached), and each seed as a faint line.

    Args:
        groups: the configurations (finished and unfinished runs both contribute their logged rows).
        metric: a column of ``metrics.csv`` (a training key such as ``loss`` or an evaluation key such as ``w2``).
        out: the PNG to write; parent directories are created.
        title: figure title (default: the metric).

    Returns:
        The path written.

    Raises:
        ValueError: no run logged a numeric value of ``metric``.
    """
    from matplotlib.figure import Figure  # imported here: tables need no matplotlib

    curves = []
    for g in groups:
        try:
            seeds = [read_curve(r.path / METRICS_CSV, metric) for r in g.runs]
        except ValueError as err:
            raise ValueError(f"{metric} is not numeric in metrics.csv ({err})") from err
        seeds = [c for c in seeds if c]
        if seeds:
            curves.append((g.label, seeds))
    if not curves:
        raise ValueError(f"no run logged {metric} in {METRICS_CSV}")
    fig = Figure(figsize=(7.0, 4.2))
    ax = fig.subplots()
    for i, (label, seeds) in enumerate(curves):
        color = f"C{i % 10}"
        for c in seeds:
            xs = sorted(c)
            ax.plot(xs, [c[x] for x in xs], color=color, lw=0.6, alpha=0.3)
        steps = sorted(set().union(*seeds))
        mean = [statistics.fmean([c[s] for c in seeds if s in c]) for s in steps]
        marker = "o" if len(steps) < 30 else None
        ax.plot(steps, mean, color=color, lw=1.6, marker=marker, ms=3, label=f"{label} (n={len(seeds)})")
        shared = [s for s in steps if all(s in c for c in seeds)]
        if len(seeds) > 1 and shared:
            m = [statistics.fmean([c[s] for c in seeds]) for s in shared]
            sd = [statistics.stdev([c[s] for c in seeds]) for s in shared]
            ax.fill_between(
                shared, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)], color=color, alpha=0.2
            )
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric}: mean ± std over seeds", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out

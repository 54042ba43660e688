"""A sweep beside a paper's published table: our mean ± std over seeds next to the published mean ± std, a verdict
per cell, and the paper's bolding rule applied to our rows.

The published numbers are small CSV files in ``sampler/analysis/published/`` (one per paper: ``method, preset,
energy, metric, mean, std, n``). A run is placed in a row by its paper preset (the Hydra choice ``experiment=...``)
and in a column by its energy (``energy=...``) and metric; every metric of these tables is lower-is-better.

- **Verdict** of a cell: *within* when the two means differ by at most two combined standard errors,
  ``|m − m_pub| ≤ 2·√(s²/n + s_pub²/n_pub)``; otherwise *better* (ours lower) or *worse*. With one seed of ours the
  standard error of our mean is unknown and the published one alone is used.
- **Bold**: per energy and metric, our best row (lowest mean) and every row not significantly worse than it by a
  one-sided Welch t-test at p = 0.05 (H1: the row's mean is larger than the best row's), over the rows the sweep
  holds. A row with fewer than two seeds cannot be tested and is bold only when it is the best.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scipy import stats as scipy_stats

from sampler.analysis.runs import Run
from sampler.analysis.summary import Stat, stat

PUBLISHED_DIR = Path(__file__).with_name("published")
#: Metric columns of the tables, in print order, with their printed names.
METRIC_NAMES = {"dlogZ": "ΔlogZ", "dlogZ_rw": "ΔlogZ^RW", "w2": "W2"}
LATEX_METRIC_NAMES = {"dlogZ": r"$\Delta\log Z$", "dlogZ_rw": r"$\Delta\log Z^{\mathrm{RW}}$", "w2": r"$W_2$"}
FORMATS = ("markdown", "md", "latex", "csv")
PM = r"$\pm$"
ALPHA = 0.05  # the bolding test's level
WITHIN_SE = 2.0  # a verdict of "within" allows this many combined standard errors


class PaperTableError(ValueError):
    """A paper that has no data file, or a sweep with nothing to compare; the message is one line."""


@dataclass(frozen=True)
class Published:
    """One published cell: mean ± std over ``n`` runs."""

    method: str
    mean: float
    std: float
    n: int


@dataclass
class Cell:
    """Ours against the paper for one (row, energy, metric)."""

    ours: Stat | None
    published: Published | None
    verdict: str | None = None  # better | within | worse | None (nothing to compare)
    bold: bool = False


@dataclass
class TableRow:
    """One experiment row on one energy."""

    preset: str
    method: str
    energy: str
    n: int  # finished runs
    n_unfinished: int
    steps: list[int] = field(default_factory=list)  # distinct trainer.max_steps of the runs
    cells: dict[str, Cell] = field(default_factory=dict)


def available_papers() -> list[str]:
    return sorted(p.stem for p in PUBLISHED_DIR.glob("*.csv"))


def load_published(paper: str) -> dict[tuple[str, str, str], Published]:
    """``{(preset, energy, metric): Published}`` of ``paper`` (rows without a preset are left out).

    Raises:
        PaperTableError: no data file for ``paper``.
    """
    path = PUBLISHED_DIR / f"{paper}.csv"
    if not path.is_file():
        raise PaperTableError(f"no published table '{paper}'; available: {', '.join(available_papers())}")
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    out = {}
    for r in csv.DictReader(lines):
        if r["preset"]:
            out[(r["preset"], r["energy"], r["metric"])] = Published(
                r["method"], float(r["mean"]), float(r["std"]), int(r["n"])
            )
    return out


def _choice(run: Run, group: str) -> str | None:
    """The run's Hydra choice for ``group`` (from ``.hydra/hydra.yaml``, else its ``group=...`` override)."""
    if run.choices and run.choices.get(group):
        return str(run.choices[group])
    for o in run.overrides or []:
        key, _, value = o.lstrip("+~").partition("=")
        if key == group and value:
            return value
    return None


def verdict(ours: Stat, pub: Published) -> str:
    """``better``, ``within`` or ``worse`` (lower is better; see the module docstring for the rule)."""
    var = (pub.std**2) / pub.n
    if ours.std is not None and ours.n > 1:
        var += (ours.std**2) / ours.n
    if abs(ours.mean - pub.mean) <= WITHIN_SE * math.sqrt(var):
        return "within"
    return "better" if ours.mean < pub.mean else "worse"


def welch_p_greater(a: Stat, b: Stat) -> float:
    """One-sided Welch t-test p-value for H1: mean(a) > mean(b), from summary statistics (sample stds)."""
    res = scipy_stats.ttest_ind_from_stats(
        a.mean, a.std, a.n, b.mean, b.std, b.n, equal_var=False, alternative="greater"
    )
    p = float(res.pvalue)
    if math.isnan(p):  # both stds 0: equal means are not worse, different ones are certainly so
        return 1.0 if a.mean <= b.mean else 0.0
    return p


def mark_bold(rows: Sequence[TableRow], metrics: Sequence[str]) -> None:
    """Bold, per energy and metric, the best row and every row not significantly worse (Welch, one-sided)."""
    for energy in {r.energy for r in rows}:
        for m in metrics:
            cells = [r.cells[m] for r in rows if r.energy == energy and r.cells[m].ours is not None]
            if not cells:
                continue
            best = min(cells, key=lambda c: c.ours.mean)
            for c in cells:
                if c is best:
                    c.bold = True
                elif c.ours.n >= 2 and best.ours.n >= 2:
                    c.bold = welch_p_greater(c.ours, best.ours) >= ALPHA


def build_rows(runs: Sequence[Run], paper: str, metrics: Sequence[str] = tuple(METRIC_NAMES)) -> list[TableRow]:
    """One row per (preset, energy) among ``runs``, with each metric's cell, verdict and bold flag.

    Runs without a preset (no ``experiment=`` choice) are grouped under ``(none)``. Unfinished runs and runs that
    lack a metric are counted, never averaged.
    """
    published = load_published(paper)
    grouped: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        if run.config is None:
            continue
        preset = _choice(run, "experiment") or "(none)"
        energy = _choice(run, "energy") or str(run.config.get("energy", {}).get("_target_", "?")).rsplit(".", 1)[-1]
        grouped.setdefault((preset, energy), []).append(run)
    if not grouped:
        raise PaperTableError("no run with a saved config below the sweep")
    order = {p: i for i, p in enumerate(dict.fromkeys(k[0] for k in published))}
    rows = []
    for (preset, energy), group in sorted(grouped.items(), key=lambda kv: (order.get(kv[0][0], 999), kv[0])):
        done = [r for r in group if r.finished]
        steps = sorted({int(r.config.get("trainer", {}).get("max_steps", 0)) for r in group})
        method = next((p.method for (pr, _, _), p in published.items() if pr == preset), preset)
        row = TableRow(preset, method, energy, len(done), len(group) - len(done), steps)
        for m in metrics:
            values = [float(r.metrics[m]) for r in done if isinstance(r.metrics.get(m), (int, float))]
            ours = stat([v for v in values if math.isfinite(v)])
            pub = published.get((preset, energy, m))
            cell = Cell(ours, pub)
            if ours is not None and pub is not None:
                cell.verdict = verdict(ours, pub)
            row.cells[m] = cell
        rows.append(row)
    mark_bold(rows, metrics)
    return rows


def _num(x: float, decimals: int) -> str:
    return f"{x:.{decimals}f}"


def _ours_text(s: Stat | None, decimals: int, pm: str) -> str:
    if s is None:
        return "—"
    return _num(s.mean, decimals) + (f"{pm}{_num(s.std, decimals)}" if s.std is not None else "")


def _pub_text(p: Published | None, decimals: int, pm: str) -> str:
    return "—" if p is None else f"{_num(p.mean, decimals)}{pm}{_num(p.std, decimals)}"


def _steps(row: TableRow) -> str:
    return "/".join(str(s) for s in row.steps)


def to_markdown(rows: Sequence[TableRow], metrics: Sequence[str], decimals: int = 3) -> str:
    """One Markdown table per energy: method, seeds, steps, then per metric ours / published / verdict."""
    out = []
    for energy in dict.fromkeys(r.energy for r in rows):
        head = ["method", "n", "unfinished", "steps"]
        for m in metrics:
            head += [f"{METRIC_NAMES.get(m, m)} ours", "published", "verdict"]
        lines = [f"### {energy}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in (r for r in rows if r.energy == energy):
            cells = [r.method, str(r.n), str(r.n_unfinished), _steps(r)]
            for m in metrics:
                c = r.cells[m]
                ours = _ours_text(c.ours, decimals, " ± ")
                cells += [f"**{ours}**" if c.bold else ours, _pub_text(c.published, decimals, " ± "), c.verdict or ""]
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def to_latex(rows: Sequence[TableRow], metrics: Sequence[str], decimals: int = 3) -> str:
    """A booktabs tabular: one column group per energy × metric, ``ours (published)`` per cell, ours in bold per
    the bolding rule; a dagger marks a cell worse than published."""
    energies = list(dict.fromkeys(r.energy for r in rows))
    methods = list(dict.fromkeys((r.preset, r.method) for r in rows))
    cols = [(e, m) for e in energies for m in metrics]
    lines = [r"\begin{tabular}{l" + "c" * len(cols) + "}", r"\toprule"]
    lines.append(" & " + " & ".join(rf"\multicolumn{{{len(metrics)}}}{{c}}{{{e}}}" for e in energies) + r" \\")
    lines.append("Method & " + " & ".join(LATEX_METRIC_NAMES.get(m, m) for _, m in cols) + r" \\")
    lines.append(r"\midrule")
    index = {(r.preset, r.energy): r for r in rows}
    for preset, method in methods:
        cells = [method.replace("&", r"\&")]
        for e, m in cols:
            r = index.get((preset, e))
            c = r.cells[m] if r else None
            if c is None or c.ours is None:
                cells.append("--")
                continue
            ours = _ours_text(c.ours, decimals, PM)
            text = rf"\textbf{{{ours}}}" if c.bold else ours
            if c.published is not None:
                text += " (" + _pub_text(c.published, decimals, PM) + ")"
            if c.verdict == "worse":
                text += r"$^\dagger$"
            cells.append(text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def to_csv(rows: Sequence[TableRow], metrics: Sequence[str]) -> str:
    """Long format, full precision: one line per (row, energy, metric)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["preset", "method", "energy", "metric", "n", "unfinished", "steps", "mean", "std", "published_mean",
         "published_std", "published_n", "verdict", "bold"]
    )  # fmt: skip
    for r in rows:
        for m in metrics:
            c = r.cells[m]
            o, p = c.ours, c.published
            w.writerow(
                [r.preset, r.method, r.energy, m, r.n, r.n_unfinished, _steps(r),
                 "" if o is None else repr(o.mean), "" if o is None or o.std is None else repr(o.std),
                 "" if p is None else p.mean, "" if p is None else p.std, "" if p is None else p.n,
                 c.verdict or "", int(c.bold)]
            )  # fmt: skip
    return buf.getvalue()


def format_paper_table(rows: Sequence[TableRow], fmt: str = "markdown", decimals: int = 3) -> str:
    metrics = list(rows[0].cells) if rows else list(METRIC_NAMES)
    if fmt in ("markdown", "md"):
        return to_markdown(rows, metrics, decimals)
    if fmt == "latex":
        return to_latex(rows, metrics, decimals)
    if fmt == "csv":
        return to_csv(rows, metrics)
    raise PaperTableError(f"--format must be one of {', '.join(FORMATS)} (got {fmt})")


def verdict_counts(rows: Sequence[TableRow]) -> dict[str, int]:
    """How many cells are better / within / worse than published."""
    counts = {"better": 0, "within": 0, "worse": 0}
    for r in rows:
        for c in r.cells.values():
            if c.verdict:
                counts[c.verdict] += 1
    return counts

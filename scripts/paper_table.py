"""A sweep beside a published table: `python scripts/paper_table.py SWEEP_DIR [--paper sendera2024]
[--format markdown|latex|csv] [--decimals 3] [--metrics dlogZ dlogZ_rw w2]`.

For each (paper preset × energy × metric) of the runs below SWEEP_DIR: our mean ± std over seeds beside the
published mean ± std, the number of seeds, and a verdict — better / within (the means within two combined
standard errors) / worse. Per energy and metric, our best row and every row not significantly worse than it
(one-sided Welch t-test, p = 0.05) are bold, the paper's rule. Unfinished runs are counted, never averaged."""

import sys

from sampler.analysis.cli import ArgumentParser
from sampler.analysis.paper_table import (
    FORMATS,
    METRIC_NAMES,
    PaperTableError,
    available_papers,
    build_rows,
    format_paper_table,
    verdict_counts,
)
from sampler.analysis.runs import NotARunError, find_run_dirs, load_run
from sampler.app.cli import UsageError, run


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="paper_table.py", description=__doc__.split("\n\n")[1])
    p.add_argument("sweep", help="a sweep directory (any directory with run directories below it)")
    p.add_argument("--paper", default="sendera2024", help=f"published table (one of: {', '.join(available_papers())})")
    p.add_argument("--format", choices=FORMATS, default="markdown", help="table format (default: markdown)")
    p.add_argument("--decimals", type=int, default=3, help="decimals of the numbers (default: 3)")
    p.add_argument("--metrics", nargs="+", default=list(METRIC_NAMES), help="metrics (default: dlogZ dlogZ_rw w2)")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        runs = [load_run(d) for d in find_run_dirs(args.sweep)]
        rows = build_rows(runs, args.paper, [m for item in args.metrics for m in item.split(",") if m])
    except (NotARunError, PaperTableError) as err:
        raise UsageError(str(err)) from err
    table = format_paper_table(rows, args.format, args.decimals)
    counts = verdict_counts(rows)
    n_runs = sum(r.n + r.n_unfinished for r in rows)
    note = (
        f"{args.sweep}: {n_runs} runs ({sum(r.n for r in rows)} finished) against {args.paper}; cells better / "
        f"within / worse than published: {counts['better']} / {counts['within']} / {counts['worse']}"
    )
    if args.format == "csv":
        print(table, end="")
        print(note, file=sys.stderr)
    else:
        print(("% " if args.format == "latex" else "") + note + "\n")
        print(table)
    return 0


if __name__ == "__main__":
    run(main)

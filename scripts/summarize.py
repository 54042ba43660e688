"""Summarise a sweep: `python scripts/summarize.py SWEEP_DIR [--format md|csv|latex] [--metrics M ...]
[--decimals 3] [--plot METRIC [--out FILE.png]]`.

One row per configuration (the resolved config without `seed` and `paths.*`), labelled by its overrides without
the seed, with `mean ± std` over seeds (sample std, n − 1) and n of every final metric in `metrics.json`.
Unfinished runs are counted, not averaged. `--plot loss` also draws the metric's curves from `metrics.csv`:
the mean per configuration with a ± std band over seeds."""

import sys
from pathlib import Path

from sampler.analysis.cli import ArgumentParser
from sampler.analysis.runs import NotARunError, find_run_dirs, group_runs, is_reproduction, load_run
from sampler.analysis.summary import FORMATS, available_metrics, default_metrics, describe, format_table, plot_curves
from sampler.app.cli import UsageError, run


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="summarize.py", description=__doc__.split("\n\n")[1])
    p.add_argument("sweep", help="a sweep directory (any directory with run directories below it) or one run")
    p.add_argument("--format", choices=FORMATS, default="md", help="table format (default: md)")
    p.add_argument("--metrics", nargs="+", help="metrics to show (default: all but step/eval_K); 'all' for every key")
    p.add_argument("--decimals", type=int, default=3, help="decimals of mean and std (default: 3)")
    p.add_argument("--plot", metavar="METRIC", help="also plot METRIC (a metrics.csv column) against the step")
    p.add_argument("--out", metavar="FILE.png", help="where --plot writes (default: SWEEP/curves_<METRIC>.png)")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.out and not args.plot:
        raise UsageError("--out names the file of --plot; add --plot METRIC")
    if args.out and not args.out.endswith(".png"):
        raise UsageError(f"--out must end in .png (got {args.out})")
    try:
        dirs = find_run_dirs(args.sweep, reproductions=True)
    except NotARunError as err:
        raise UsageError(str(err)) from err
    kept = [d for d in dirs if d == Path(args.sweep) or not is_reproduction(d)]
    groups, pending = group_runs([load_run(d) for d in kept])

    available = available_metrics(groups)
    if args.metrics:
        metrics = [m for item in args.metrics for m in item.split(",") if m]
        metrics = available if metrics == ["all"] else metrics
        unknown = [m for m in metrics if m not in available]
        if unknown and available:
            raise UsageError(f"no final metric {', '.join(unknown)}; the runs have: {', '.join(available)}")
    else:
        metrics = default_metrics(groups)

    note = f"{args.sweep}: {describe(groups, len(pending), len(dirs) - len(kept))}"
    table = format_table(groups, metrics, args.format, args.decimals)
    if args.format == "md":
        print(f"{note}\n\n{table}")
    elif args.format == "latex":
        print(f"% {note}\n{table}")
    else:
        print(table)

    if args.plot:
        out = Path(args.out) if args.out else Path(args.sweep) / f"curves_{args.plot}.png"
        try:
            plot_curves(groups, args.plot, out)
        except ValueError as err:
            raise UsageError(str(err)) from err
        print(f"plot: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run(main)

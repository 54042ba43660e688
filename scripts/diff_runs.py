"""Diff two runs: `python scripts/diff_runs.py RUN_A RUN_B`.

Prints the config keys that differ (dotted paths, A → B; `paths.run_dir` ignored, other `paths.*` listed apart),
the Hydra group choices, the environment differences of `manifest.json` (git commit, dirty diff, package
versions, python, device, threads, host) and the final metrics (A, B, B − A). Exit status 0 when the configs are
equal, 1 when they differ, 2 on bad input."""

from sampler.analysis.cli import ArgumentParser
from sampler.analysis.diff import diff_runs, format_diff
from sampler.analysis.runs import NotARunError, load_run
from sampler.app.cli import UsageError, run


def main(argv: list[str]) -> int:
    p = ArgumentParser(prog="diff_runs.py", description=__doc__.split("\n\n")[1])
    p.add_argument("run_a", help="run directory A (the old side)")
    p.add_argument("run_b", help="run directory B (the new side)")
    args = p.parse_args(argv)
    try:
        a, b = load_run(args.run_a), load_run(args.run_b)
        d = diff_runs(a, b)
    except (NotARunError, ValueError) as err:
        raise UsageError(str(err)) from err
    print(format_diff(d, args.run_a, args.run_b))
    return 0 if d.configs_equal else 1


if __name__ == "__main__":
    run(main)

"""Reproduce a run: `python scripts/reproduce.py RUN [--out DIR] [--rtol X] [--atol X] [--trust NAME,...]`.

Trains again from `RUN/config_resolved.yaml` into a new directory (default: `RUN_repro_<time>` beside the run),
then compares every final metric of the two `metrics.json` (timings `*_s` aside): exactly when both ran on the
CPU, within rtol/atol (default 1e-3/1e-5) on a GPU. Prints the table; exit status 0 when all match, 1 when any
differs, 2 on bad input.

The saved config's `_target_`s must be the platform's own classes or named with `--trust` (building a target runs
its code: a run directory written by someone else could name any callable)."""

import sys

from sampler.analysis.cli import ArgumentParser
from sampler.analysis.reproduce import (
    ReproduceError,
    check_reproducible,
    check_trusted,
    format_reproduction,
    reproduce,
)
from sampler.analysis.runs import NotARunError
from sampler.app.cli import UsageError, run


def main(argv: list[str]) -> int:
    p = ArgumentParser(prog="reproduce.py", description=__doc__.split("\n\n")[1])
    p.add_argument("run", help="a finished run directory")
    p.add_argument("--out", metavar="DIR", help="the new run directory (must not exist, or be empty)")
    p.add_argument("--rtol", type=float, help="relative tolerance (default: 0 on CPU, 1e-3 on GPU)")
    p.add_argument("--atol", type=float, help="absolute tolerance (default: 0 on CPU, 1e-5 on GPU)")
    p.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="NAME,...",
        help="dotted _target_ names of the saved config to build besides the platform's classes (sampler.*)",
    )
    args = p.parse_args(argv)
    if any(t is not None and t < 0 for t in (args.rtol, args.atol)):
        raise UsageError("--rtol and --atol must be ≥ 0")
    try:
        source, out = check_reproducible(args.run, args.out)  # before importing torch and Lightning
        trust = [name.strip() for value in args.trust for name in value.split(",") if name.strip()]
        from sampler.training.run import USER_ERRORS, TrainingInterrupted

        try:
            check_trusted(source, trust)
            print(f"reproducing {args.run} into {out}", file=sys.stderr)
            result = reproduce(args.run, out, args.rtol, args.atol, trust)
        except USER_ERRORS as err:
            raise UsageError(str(err)) from err
        except TrainingInterrupted as stopped:  # SIGTERM/SIGINT: checkpoint saved, the same command resumes
            print(f"error: {stopped}", file=sys.stderr)
            return stopped.exit_status
    except (NotARunError, ReproduceError) as err:
        raise UsageError(str(err)) from err
    print(format_reproduction(result))
    return 0 if result.all_match else 1


if __name__ == "__main__":
    run(main)

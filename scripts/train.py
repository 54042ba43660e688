"""Train a sampler: `python scripts/train.py [group=option ...] [key=value ...] [-m key=a,b,c]` (see README.md)."""

import sys
from pathlib import Path

from sampler.app.composition import composition_error
from sampler.app.launchers import launcher_error

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # the config_path of @hydra.main below

if __name__ == "__main__" and (
    error := launcher_error(sys.argv[1:]) or composition_error(sys.argv[1:], CONF_DIR, "config")
):
    print(error, file=sys.stderr)  # one line, before the slow imports below and before anything is submitted
    sys.exit(2)

# The task function must reference `main` at module level: a SLURM job unpickles it, and importing
# sampler.training there registers the resolvers the sweep's config needs.
import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import sampler.training  # noqa: E402, F401  (registers the config resolvers)
from sampler.training.run import main  # noqa: E402
from sampler.training.search import run_trial, under_optuna  # noqa: E402


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def app(cfg: DictConfig) -> float | None:
    if under_optuna():  # a trial of `-m +search=NAME`: the study's objective, search.objective of metrics.json
        return run_trial(cfg)
    metrics = main(cfg)
    return metrics.get("dlogZ_rw")


def flags_first(argv: list[str]) -> list[str]:
    """Move Hydra's value-less flags before the overrides: argparse rejects overrides on both sides of ``-m``, and
    users type ``train.py loss=subtb energy=funnel -m seed=0,1,2``."""
    flags = [a for a in argv[1:] if a in ("-m", "--multirun")]
    return argv[:1] + flags + [a for a in argv[1:] if a not in flags]


if __name__ == "__main__":
    sys.argv = flags_first(sys.argv)
    app()

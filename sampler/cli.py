"""Small command-line helpers shared by the ``key=value`` scripts (eval, sample): argument checks that answer in
one line before any heavy import, and loading the trained module of a checkpoint."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


class UsageError(Exception):
    """Bad command-line input; the message is printed as one line (plus the usage) and the script exits 2."""


def parse_args(argv: list[str], keys: Iterable[str], required: Iterable[str], usage: str) -> DictConfig:
    """``key=value`` arguments as a config, or :class:`UsageError` naming a missing or unknown key."""
    args = OmegaConf.from_cli(argv)
    missing = [k for k in required if k not in args]
    unknown = sorted(set(args) - set(keys))
    if missing or unknown:
        what = f"missing {', '.join(missing)}" if missing else f"unknown argument {', '.join(unknown)}"
        raise UsageError(f"{what}\n{usage}")
    return args


def load_trained(args: DictConfig):
    """``(module, cfg, step)`` for ``args.ckpt`` (and optional ``config``, ``device``)."""
    if not Path(str(args.ckpt)).is_file():
        raise UsageError(f"checkpoint not found: {args.ckpt}")
    from sampler.training.checkpointing import CheckpointError
    from sampler.training.config_check import ConfigError
    from sampler.training.loading import load_module

    try:
        return load_module(args.ckpt, args.get("config"), args.get("device", "cpu"))
    except (CheckpointError, ConfigError) as err:
        raise UsageError(str(err)) from err


def run(main: Callable[[list[str]], int]) -> None:
    """Call ``main(sys.argv[1:])`` and exit with its status; a :class:`UsageError` becomes ``error: ...``, exit 2."""
    try:
        status = main(sys.argv[1:])
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        status = 2
    sys.exit(status)

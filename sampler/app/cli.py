"""Small command-line helpers shared by the ``key=value`` scripts (eval, sample): typed argument checks that answer
in one line before any heavy import, and loading the trained module of a checkpoint."""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

#: The largest seed a ``torch.Generator`` takes.
MAX_SEED = 2**64 - 1
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


class UsageError(Exception):
    """Bad command-line input; the message is printed as one line (plus the usage) and the script exits 2."""


def parse_args(argv: list[str], keys: Iterable[str], required: Iterable[str], usage: str) -> dict[str, str]:
    """``key=value`` arguments as ``{key: value}`` (the values as typed), or :class:`UsageError` naming a missing or
    unknown key, or an argument that is not ``key=value``."""
    args: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise UsageError(f"arguments are key=value (got {arg!r})\n{usage}")
        args[key] = value
    missing = [k for k in required if k not in args]
    unknown = sorted(set(args) - set(keys))
    if missing or unknown:
        what = f"missing {', '.join(missing)}" if missing else f"unknown argument {', '.join(unknown)}"
        raise UsageError(f"{what}\n{usage}")
    return args


def _as_int(raw: str) -> int | None:
    """``raw`` as an integer: decimal digits, or a float that is a whole number (``1e6``); else None."""
    text = raw.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if math.isfinite(value) and value.is_integer() else None


def int_arg(args: dict[str, str], key: str, default: int | None = None, minimum: int = 1, maximum=None) -> int | None:
    """``args[key]`` as an integer in ``[minimum, maximum]`` (``default`` when absent); whole-number floats such as
    ``1e6`` are accepted.

    Raises:
        UsageError: ``K must be an integer ≥ 2 (got 'abc')``.
    """
    if key not in args:
        return default
    value = _as_int(args[key])
    if value is None or value < minimum or (maximum is not None and value > maximum):
        bound = f"≥ {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise UsageError(f"{key} must be an integer {bound} (got {args[key]!r})")
    return value


def positive_int(args: dict[str, str], key: str, default: int | None = None, minimum: int = 1) -> int | None:
    """``args[key]`` as an integer ≥ ``minimum`` (≥ 1); see :func:`int_arg`."""
    return int_arg(args, key, default, minimum=max(1, minimum))


def non_negative_int(args: dict[str, str], key: str, default: int | None = None, maximum=None) -> int | None:
    """``args[key]`` as an integer ≥ 0 (at most ``maximum``); see :func:`int_arg`."""
    return int_arg(args, key, default, minimum=0, maximum=maximum)


def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def path_arg(args: dict[str, str], key: str, kind: str, what: str | None = None) -> Path | None:
    """``args[key]`` as a path (None when absent), checked for its use.

    Args:
        args: the parsed arguments.
        key: the argument.
        kind: ``file`` (an existing file to read), ``dir`` (a directory to write into, created when missing) or
            ``out`` (a file to write, its directory created when missing).
        what: the name used in a "not found" message (default: the key).

    Raises:
        UsageError: an empty value, a missing file, or a path that cannot be written as asked.
    """
    if key not in args:
        return None
    raw = args[key]
    if not raw.strip():
        raise UsageError(f"{key} must be a path (got {raw!r})")
    path = Path(raw).expanduser()
    if kind == "file":
        if not path.is_file():
            raise UsageError(f"{what or key} not found: {raw}")
        return path
    if kind == "dir" and path.exists() and not path.is_dir():
        raise UsageError(f"{key}={raw} is not a directory")
    if kind == "out" and path.is_dir():
        raise UsageError(f"{key}={raw} is a directory; give a file name")
    parent = _first_existing(path if kind == "dir" else path.parent)
    if not parent.is_dir():
        raise UsageError(f"{key}={raw} cannot be created: {parent} is not a directory")
    return path


def device_arg(args: dict[str, str], key: str = "device", default: str = "cpu") -> str:
    """``args[key]`` as ``cpu``, ``cuda`` or ``cuda:N`` (whether that GPU exists is checked on loading)."""
    value = args.get(key, default).strip()
    if not _DEVICE.fullmatch(value):
        raise UsageError(f"{key} must be cpu, cuda or cuda:N (got {args[key]!r})")
    return value


def trust_arg(args: dict[str, str], key: str = "trust") -> list[str]:
    """``trust=my.module.MyEnergy,other.Cls`` as the list of dotted names (empty when absent)."""
    names = [n.strip() for n in args.get(key, "").split(",") if n.strip()]
    bad = [n for n in names if not _DOTTED.fullmatch(n)]
    if bad or (key in args and not names):
        raise UsageError(f"{key} must be comma-separated dotted names such as my.module.MyEnergy (got {args[key]!r})")
    return names


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= count:
            have = f"{count} GPU{'s' if count != 1 else ''}" if count else "no GPU"
            raise UsageError(f"device={device}, but torch sees {have} here")


def load_trained(args: dict[str, str], before_build: Callable | None = None):
    """``(module, cfg, step)`` for ``args["ckpt"]`` (and optional ``config``, ``device``, ``trust``).

    Args:
        args: the parsed arguments.
        before_build: called with the run config once its targets are checked, before the checkpoint is read
            (a memory check); a :class:`~sampler.training.config_check.ConfigError` it raises becomes a usage
            error.
    """
    device = device_arg(args)
    trusted = trust_arg(args)
    ckpt = path_arg(args, "ckpt", "file", what="checkpoint")
    config = path_arg(args, "config", "file", what="config")
    _check_device(device)
    from sampler.training.checkpointing import CheckpointError
    from sampler.training.config_check import ConfigError
    from sampler.training.loading import load_module

    try:
        return load_module(ckpt, config, device, trusted=trusted, before_build=before_build)
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

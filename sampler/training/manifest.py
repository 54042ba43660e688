"""``manifest.json``: everything about a run that is not in its config (code version, environment, timing)."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = (
    "torch",
    "lightning",
    "hydra-core",
    "omegaconf",
    "wandb",
    "pot",
    "submitit",
    "hydra-submitit-launcher",
    "numpy",
    "matplotlib",
    "sampler",
)


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state() -> dict:
    commit = _git("rev-parse", "HEAD")
    diff = _git("diff", "HEAD")
    return {
        "git_commit": commit.strip() if commit else None,
        "git_dirty": bool(diff and diff.strip()) if diff is not None else None,
        "git_diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
    }


def package_versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def hydra_overrides() -> list[str] | None:
    """The job's command-line overrides (under submitit ``sys.argv`` is submitit's, not the user's command)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None
    except Exception:  # noqa: BLE001 - no Hydra context: no overrides to record
        return None


def build_manifest(seed: int, device: str) -> dict:
    return {
        "start_time": now(),
        "end_time": None,
        "host": socket.gethostname(),
        "command": sys.argv,
        "overrides": hydra_overrides(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "seed": seed,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        **git_state(),
        "packages": package_versions(),
        "resumes": [],
    }


def named_write_error(err: OSError, path: Path) -> OSError:
    """``err`` naming ``path``: a failed ``write`` carries no file name, and a failed write of a temporary file
    beside ``path`` is a failure to write ``path``.

    Args:
        err: the error raised while writing ``path``.
        path: the file being written.

    Returns:
        ``err`` itself when it names another file (a directory that could not be created, say), else an
        ``OSError`` with the same errno naming ``path``.
    """
    beside = [f for f in (err.filename, err.filename2) if f is not None and Path(f).parent == path.parent]
    if err.filename is not None and not beside:  # (a copy names its source first, its target second)
        return err
    return OSError(err.errno, err.strerror or os.strerror(err.errno or 0), str(path))


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that it is never half-written: write ``path.tmp``, fsync, rename.

    Args:
        path: the file to write.
        data: its new content.

    Raises:
        OSError: naming ``path`` (a full disk, a read-only file system); the temporary file is removed.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise named_write_error(err, path) from err
        raise


def write_json(path: Path, obj: dict) -> None:
    """Write ``obj`` to ``path`` as indented JSON, atomically (:func:`write_atomic`)."""
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())

"""Atomic checkpoints: write to a temporary file, keep the previous good one, then rename.

``last.ckpt`` is never half-written: a kill during the write leaves the temporary file, and ``last.ckpt`` (or,
if that was being replaced, ``previous.ckpt``) intact. :func:`find_resume_checkpoint` validates before resuming.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

LAST, PREVIOUS = "last.ckpt", "previous.ckpt"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or cannot be read."""


def save_atomic(trainer, directory: Path) -> Path:
    """Save ``trainer``'s full state to ``directory/last.ckpt``, moving the old one to ``previous.ckpt``."""
    directory.mkdir(parents=True, exist_ok=True)
    last, prev, tmp = directory / LAST, directory / PREVIOUS, directory / (LAST + ".tmp")
    trainer.save_checkpoint(tmp, weights_only=False)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    if last.exists():
        os.replace(last, prev)
    os.replace(tmp, last)
    return last


def has_checkpoint(directory: Path) -> bool:
    """Whether ``directory`` holds a ``last.ckpt`` or ``previous.ckpt`` (without reading either)."""
    return (directory / LAST).exists() or (directory / PREVIOUS).exists()


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint as tensors and plain containers (``weights_only``), or raise :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here means an unreadable file
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "sampler_state" not in ckpt:
        raise CheckpointError(f"checkpoint {path} is not a sampler checkpoint (no state_dict/sampler_state)")
    return ckpt


def find_resume_checkpoint(directory: Path) -> tuple[Path | None, dict | None]:
    """The newest readable checkpoint in ``directory`` (``last.ckpt``, else ``previous.ckpt``), with its contents.

    Returns ``(None, None)`` when the directory has none. A corrupt ``last.ckpt`` is reported and skipped; when no
    good checkpoint remains, raises :class:`CheckpointError` rather than silently starting afresh.
    """
    candidates = [directory / LAST, directory / PREVIOUS]
    present = [p for p in candidates if p.exists()]
    if not present:
        return None, None
    errors = []
    for path in present:
        try:
            return path, load_checkpoint(path)
        except CheckpointError as err:
            log.warning("%s; trying the previous checkpoint", err)
            errors.append(str(err))
    raise CheckpointError("; ".join(errors) + " — no readable checkpoint left; delete checkpoints/ to start afresh")

"""Atomic, checksummed checkpoints: write to a temporary file, keep the previous good one, then rename.

``last.ckpt`` is never half-written: a kill during the write leaves the temporary file, and ``last.ckpt`` (or,
if that was being replaced, ``previous.ckpt``) intact. ``SHA256SUMS`` beside them (``sha256sum`` format) lists
the SHA-256 of every checkpoint file that may exist; a file whose digest is not listed is corrupt (a flipped bit on
disk, a bad copy) and is never resumed from. :func:`find_resume_checkpoint` verifies and reads before resuming.

The order of :func:`save_atomic` keeps every existing checkpoint verifiable whenever the process dies:

1. write ``last.ckpt.tmp``; write ``SHA256SUMS`` listing the current ``last.ckpt``, ``previous.ckpt`` and the
   temporary file (each rewrite of ``SHA256SUMS`` is itself a temporary file, fsync and rename);
2. rename ``last.ckpt`` → ``previous.ckpt``, then ``last.ckpt.tmp`` → ``last.ckpt``;
3. rewrite ``SHA256SUMS`` with the two live files only.

Verification is by content (the file's digest is listed), not by name, so the renames need no rewrite in between.
A directory without ``SHA256SUMS`` was written by an older version: its checkpoints load, unverified.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

import torch

from sampler.training.manifest import write_atomic

log = logging.getLogger(__name__)

LAST, PREVIOUS, SUMS = "last.ckpt", "previous.ckpt", "SHA256SUMS"
_SUMS_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or cannot be read."""


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sums(directory: Path) -> dict[str, str] | None:
    """``{digest: file name}`` from ``directory/SHA256SUMS``; ``None`` when the directory has none (older runs).

    Lines that are not ``<64 hex digits>  <name>`` are ignored, so a damaged list verifies nothing.
    """
    try:
        text = (directory / SUMS).read_text(errors="replace")
    except FileNotFoundError:
        return None
    except OSError as err:
        raise CheckpointError(f"cannot read {directory / SUMS} ({err})") from err
    return {m.group(1): m.group(2) for m in map(_SUMS_LINE.match, text.splitlines()) if m}


def _write_sums(directory: Path, entries: dict[str, str]) -> None:
    """Replace ``directory/SHA256SUMS`` with ``entries`` (``{digest: name}``) atomically."""
    write_atomic(directory / SUMS, "".join(f"{digest}  {name}\n" for digest, name in entries.items()).encode())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    """Make the renames in ``directory`` durable (where the platform allows opening a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _trusted_digest(path: Path, sums: dict[str, str] | None) -> str | None:
    """The digest of ``path`` when it exists and verifies (any file verifies in a directory without sums)."""
    if not path.is_file():
        return None
    digest = file_sha256(path)
    return digest if sums is None or digest in sums else None


def save_atomic(trainer, directory: Path) -> Path:
    """Save ``trainer``'s full state to ``directory/last.ckpt``, moving the old one to ``previous.ckpt``, and
    record both digests in ``directory/SHA256SUMS``.

    A ``last.ckpt`` that no longer matches its digest is not kept as ``previous.ckpt`` (the good
    ``previous.ckpt`` stays). On any failure (a full disk, say) the temporary file is removed.

    Args:
        trainer: the Lightning trainer whose ``save_checkpoint`` writes the state.
        directory: the run's ``checkpoints`` directory (created if missing).

    Returns:
        The path of the new ``last.ckpt``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    last, prev, tmp = directory / LAST, directory / PREVIOUS, directory / (LAST + ".tmp")
    try:
        trainer.save_checkpoint(tmp, weights_only=False)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        new = file_sha256(tmp)
        sums = read_sums(directory)
        old_last, old_prev = _trusted_digest(last, sums), _trusted_digest(prev, sums)
        staged = {d: n for d, n in ((old_prev, PREVIOUS), (old_last, LAST)) if d is not None}
        _write_sums(directory, {**staged, new: tmp.name})
        if old_last is not None:
            os.replace(last, prev)
            old_prev = old_last
        os.replace(tmp, last)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_sums(directory, {d: n for d, n in ((old_prev, PREVIOUS), (new, LAST)) if d is not None})
    return last


def has_checkpoint(directory: Path) -> bool:
    """Whether ``directory`` holds a ``last.ckpt`` or ``previous.ckpt`` (without reading either)."""
    return (directory / LAST).exists() or (directory / PREVIOUS).exists()


def verify_checkpoint(path: Path) -> bool:
    """Check ``path`` against the ``SHA256SUMS`` beside it.

    Args:
        path: a checkpoint file.

    Returns:
        ``True`` when its digest is listed; ``False`` when there is no ``SHA256SUMS`` to check against.

    Raises:
        CheckpointError: the digest is not listed (the file changed after it was written).
    """
    sums = read_sums(path.parent)
    if sums is None:
        return False
    if file_sha256(path) not in sums:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated (its SHA-256 is not in {SUMS} beside it)")
    return True


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint as tensors and plain containers (``weights_only``), or raise :class:`CheckpointError`.

    When a ``SHA256SUMS`` sits beside the file, the file must match one of its digests.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not verify_checkpoint(path):
        log.info("no %s beside %s (written by an older version, or copied): loading it unverified", SUMS, path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here means an unreadable file
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "sampler_state" not in ckpt:
        raise CheckpointError(f"checkpoint {path} is not a sampler checkpoint (no state_dict/sampler_state)")
    return ckpt


def find_resume_checkpoint(directory: Path) -> tuple[Path | None, dict | None]:
    """The newest readable, verified checkpoint in ``directory`` (``last.ckpt``, else ``previous.ckpt``), with its
    contents.

    Returns ``(None, None)`` when the directory has none. A corrupt ``last.ckpt`` is reported in one warning line
    and skipped; when no good checkpoint remains, raises :class:`CheckpointError` rather than silently starting
    afresh.
    """
    candidates = [directory / LAST, directory / PREVIOUS]
    present = [p for p in candidates if p.exists()]
    if not present:
        return None, None
    errors = []
    for i, path in enumerate(present):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as err:
            if i + 1 < len(present):
                log.warning("%s; falling back to %s", err, present[i + 1].name)
            errors.append(str(err))
    raise CheckpointError("; ".join(errors) + " — no readable checkpoint left; delete checkpoints/ to start afresh")

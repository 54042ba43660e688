"""Checkpoints carry SHA-256 digests: a damaged ``last.ckpt`` is never resumed from, and a save killed at any point
leaves every checkpoint file that exists verifiable."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_cfg

from sampler.training import checkpointing
from sampler.training.checkpointing import (
    LAST,
    PREVIOUS,
    SUMS,
    CheckpointError,
    find_resume_checkpoint,
    load_checkpoint,
    read_sums,
    save_atomic,
    verify_checkpoint,
)
from sampler.training.run import train

#: Ten steps, a checkpoint every five: ``last.ckpt`` at step 10, ``previous.ckpt`` at step 5.
OVERRIDES = [*TINY, "trainer.max_steps=10", "eval.every=10"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train(compose_cfg(OVERRIDES, run_dir))
    return run_dir


def copy_for_resume(finished_run: Path, tmp_path: Path) -> Path:
    """A copy of the finished run without its ``metrics.json``: training it again resumes from a checkpoint."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "metrics.json").unlink()
    return run_dir


def tensor_bytes_offset(path: Path) -> tuple[int, int]:
    """``(offset, size)`` in the file of the largest tensor storage of a ``torch.save`` zip archive."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def flip_one_byte(path: Path) -> None:
    """Flip the exponent bit of one float in a weight: the file still loads, with a different value."""
    offset, size = tensor_bytes_offset(path)
    raw = bytearray(path.read_bytes())
    raw[offset + (size // 2 // 4) * 4 + 3] ^= 0x40
    path.write_bytes(bytes(raw))


def garble_64_bytes(path: Path) -> None:
    """Overwrite 64 bytes of a weight with 0xFF (sixteen NaNs)."""
    offset, size = tensor_bytes_offset(path)
    raw = bytearray(path.read_bytes())
    start = offset + (size // 2 // 4) * 4
    raw[start : start + 64] = b"\xff" * 64
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", [flip_one_byte, garble_64_bytes], ids=["one_flipped_byte", "64_garbled_bytes"])
def test_a_damaged_last_checkpoint_resumes_from_previous_and_reproduces_the_metrics(
    finished_run, tmp_path, caplog, damage
):
    run_dir = copy_for_resume(finished_run, tmp_path)
    last = run_dir / "checkpoints" / LAST
    damage(last)
    torch.load(last, map_location="cpu", weights_only=True)  # still a loadable archive: only the digest tells
    with caplog.at_level(logging.INFO, logger="sampler.training.checkpointing"):
        metrics, _ = train(compose_cfg(OVERRIDES, run_dir))
    ours = [r for r in caplog.records if r.name == checkpointing.__name__]
    warnings = [r.getMessage() for r in ours if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(last) in warnings[0] and f"falling back to {PREVIOUS}" in warnings[0]
    assert "SHA-256" in warnings[0] and "\n" not in warnings[0]
    resume = json.loads((run_dir / "manifest.json").read_text())["resumes"][-1]
    assert (resume["from_step"], resume["checkpoint"]) == (5, PREVIOUS)
    assert (run_dir / "metrics.json").read_text() == (finished_run / "metrics.json").read_text()
    # The new checkpoints verify, and the list names exactly them.
    ckpts = run_dir / "checkpoints"
    assert verify_checkpoint(ckpts / LAST) and verify_checkpoint(ckpts / PREVIOUS)
    assert sorted(read_sums(ckpts).values()) == [LAST, PREVIOUS]


def test_both_checkpoints_damaged_is_one_line_error(finished_run, tmp_path):
    run_dir = copy_for_resume(finished_run, tmp_path)
    flip_one_byte(run_dir / "checkpoints" / LAST)
    garble_64_bytes(run_dir / "checkpoints" / PREVIOUS)
    with pytest.raises(CheckpointError) as info:
        train(compose_cfg(OVERRIDES, run_dir))
    message = str(info.value)
    assert "\n" not in message and LAST in message and PREVIOUS in message and "delete checkpoints/" in message
    assert not (run_dir / "metrics.json").exists()


def test_load_checkpoint_rejects_a_file_whose_digest_is_not_listed(finished_run, tmp_path):
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(finished_run / "checkpoints", ckpts)
    assert load_checkpoint(ckpts / LAST)["global_step"] == 10
    flip_one_byte(ckpts / LAST)
    with pytest.raises(CheckpointError, match=r"corrupt or truncated \(its SHA-256 is not in SHA256SUMS"):
        load_checkpoint(ckpts / LAST)


def test_a_run_written_without_sha256sums_resumes_unverified(finished_run, tmp_path, caplog):
    run_dir = copy_for_resume(finished_run, tmp_path)
    (run_dir / "checkpoints" / SUMS).unlink()
    with caplog.at_level(logging.INFO, logger="sampler.training.checkpointing"):
        train(compose_cfg(OVERRIDES, run_dir))
    ours = [r for r in caplog.records if r.name == checkpointing.__name__]
    assert len(ours) == 1 and "unverified" in ours[0].getMessage() and ours[0].levelno == logging.INFO
    assert json.loads((run_dir / "manifest.json").read_text())["resumes"][-1]["checkpoint"] == LAST
    assert (run_dir / "metrics.json").read_text() == (finished_run / "metrics.json").read_text()


class FakeTrainer:
    """Writes a small sampler checkpoint whose ``global_step`` counts the saves."""

    def __init__(self, fail_with: OSError | None = None):
        self.step, self.fail_with = 0, fail_with

    def save_checkpoint(self, path, weights_only=False):
        self.step += 1
        if self.fail_with is not None:
            Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")
            raise self.fail_with
        state = {"state_dict": {"w": torch.full((4,), float(self.step))}, "sampler_state": {}}
        torch.save({**state, "global_step": self.step}, path)


class Killed(BaseException):
    """Stands for the process dying at this point."""


@pytest.mark.parametrize("saves_before", [0, 1, 2])
@pytest.mark.parametrize("renames_before_kill", [0, 1, 2, 3])
def test_a_save_killed_between_any_two_renames_leaves_verifiable_checkpoints(
    tmp_path, monkeypatch, saves_before, renames_before_kill
):
    ckpts = tmp_path / "checkpoints"
    trainer = FakeTrainer()
    for _ in range(saves_before):
        save_atomic(trainer, ckpts)
    real_replace, calls = os.replace, []

    def replace_then_die(src, dst):
        if len(calls) == renames_before_kill:
            raise Killed
        calls.append((Path(src).name, Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(checkpointing.os, "replace", replace_then_die)
    try:
        save_atomic(trainer, ckpts)
    except Killed:
        pass
    monkeypatch.setattr(checkpointing.os, "replace", real_replace)

    present = [p for p in (ckpts / LAST, ckpts / PREVIOUS) if p.exists()]
    assert all(verify_checkpoint(p) for p in present)
    path, ckpt = find_resume_checkpoint(ckpts)
    newest = saves_before + 1 if (LAST + ".tmp", LAST) in calls else saves_before
    assert (ckpt["global_step"] if ckpt else 0) == newest
    # The next save recovers fully: two files, two digests.
    save_atomic(trainer, ckpts)
    assert load_checkpoint(ckpts / LAST)["global_step"] == saves_before + 2
    assert sorted(read_sums(ckpts).values()) == ([LAST, PREVIOUS] if saves_before or newest else [LAST])
    assert sorted(p.name for p in ckpts.iterdir()) == sorted([SUMS, *read_sums(ckpts).values()])


def test_a_failed_write_leaves_no_temporary_file_and_the_old_checkpoints_intact(tmp_path):
    ckpts = tmp_path / "checkpoints"
    trainer = FakeTrainer()
    save_atomic(trainer, ckpts)
    save_atomic(trainer, ckpts)
    before = {p.name: p.read_bytes() for p in ckpts.iterdir()}
    trainer.fail_with = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError, match="No space left"):
        save_atomic(trainer, ckpts)
    assert {p.name: p.read_bytes() for p in ckpts.iterdir()} == before
    assert find_resume_checkpoint(ckpts)[1]["global_step"] == 2


def test_a_damaged_last_checkpoint_is_not_kept_as_previous(tmp_path):
    # After a resume from previous.ckpt, the next save must not rotate the damaged file into previous.ckpt.
    ckpts = tmp_path / "checkpoints"
    trainer = FakeTrainer()
    save_atomic(trainer, ckpts)
    save_atomic(trainer, ckpts)
    flip_one_byte(ckpts / LAST)
    save_atomic(trainer, ckpts)
    assert load_checkpoint(ckpts / LAST)["global_step"] == 3
    assert load_checkpoint(ckpts / PREVIOUS)["global_step"] == 1

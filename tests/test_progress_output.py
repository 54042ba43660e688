"""Progress output: Lightning's bar on a terminal; one plain log line every N steps when stdout is a file or a pipe
(SLURM logs, CI, nohup), where the bar's carriage-return redraws would fill the log."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sampler.training.callbacks import LossProgressBar, PlainProgress, progress_bar
from sampler.training.config_check import ConfigError
from sampler.training.run import train

ROOT = Path(__file__).resolve().parents[1]
PROGRESS_LINE = re.compile(r"- step (\d+)/(\d+)  loss \S+  eps \S+")

#: A short real run from the command line: 100 steps, so 100 // 50 = 2 steps between lines.
SCRIPT_ARGS = [
    "model.T=10",
    "model.hidden_dim=16",
    "train.batch_size=16",
    "trainer.max_steps=100",
    "eval.every=50",
    "eval.K=64",
    "eval.plots=false",
    "checkpoint.every=100",
    "exploration=linear",
]


def progress_steps(text: str) -> list[int]:
    return [int(m.group(1)) for m in PROGRESS_LINE.finditer(text)]


def drive(bar: PlainProgress, steps: int, stats: dict) -> None:
    """Lightning's calls to a progress callback for a run of ``steps`` steps."""
    trainer = SimpleNamespace(global_step=0)
    module = SimpleNamespace(stats=stats)
    bar.on_train_start(trainer, module)
    for step in range(1, steps + 1):
        trainer.global_step = step
        bar.on_train_batch_end(trainer, module, None, None, step - 1)


def test_plain_progress_logs_every_n_steps_and_the_last(caplog):
    caplog.set_level(logging.INFO, logger="sampler.training.callbacks")
    drive(PlainProgress(steps=20, every=7), 20, {"loss": torch.tensor(0.24013), "eps": 0.1, "phase": "forward"})
    lines = [r.getMessage() for r in caplog.records]
    assert [int(line.split()[1].split("/")[0]) for line in lines] == [7, 14, 20]
    assert all(line.startswith("step ") and "/20  loss 0.2401  eps 0.1  " in line for line in lines)


def test_progress_line_speed_and_eta_count_from_where_this_process_started():
    bar = PlainProgress(steps=25000, every=500)
    stats = {"loss": 0.5, "eps": 0.0, "log_Z": torch.tensor(4.8166)}
    bar._start = (100.0, 0)
    # 2500 steps in 750 s: 3.33 it/s, and 22500 steps to go take 6750 s.
    assert bar.line(2500, stats, now=850.0) == "step 2500/25000  loss 0.5  eps 0  log_Z 4.817  3.33 it/s  eta 1:52:30"
    bar._start = (100.0, 20000)  # resumed at step 20000: the speed is this process's own
    assert bar.line(21000, stats, now=300.0) == "step 21000/25000  loss 0.5  eps 0  log_Z 4.817  5 it/s  eta 0:13:20"
    assert bar.line(20000, {}, now=100.0) == "step 20000/25000"  # no step done yet: no speed to report


def test_a_terminal_gets_the_bar_and_a_pipe_plain_lines():
    leader, follower = pty.openpty()
    read_end, write_end = os.pipe()
    with os.fdopen(follower, "w") as terminal, os.fdopen(write_end, "w") as pipe:
        assert type(progress_bar(1000, stream=terminal)) is LossProgressBar
        plain = progress_bar(1000, stream=pipe)
        assert isinstance(plain, PlainProgress) and plain.every == 20  # 50 lines a run by default
        assert progress_bar(25000, stream=pipe).every == 500
        assert progress_bar(5, stream=pipe).every == 1
        assert progress_bar(1000, every=7, stream=pipe).every == 7
    assert isinstance(progress_bar(1000, stream=io.StringIO()), PlainProgress)
    os.close(leader)
    os.close(read_end)


@pytest.mark.parametrize("every", [0, -5, 2.5, True])
def test_progress_every_must_be_a_positive_integer(every):
    with pytest.raises(ConfigError, match=r"^trainer.progress_every must be a positive integer or null \(got "):
        progress_bar(100, every=every, stream=io.StringIO())


def test_a_run_whose_stdout_is_not_a_terminal_writes_lines_not_redraws(tiny_cfg, monkeypatch, caplog):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    caplog.set_level(logging.INFO, logger="sampler.training.callbacks")
    # 10 steps: by default one line per 10 // 50 → 1 step; the evaluation line of step 5 among them.
    train(tiny_cfg("trainer.enable_progress_bar=true", "trainer.max_steps=10", "eval.every=5", "checkpoint.every=10"))
    messages = [r.getMessage() for r in caplog.records]
    progress = [m for m in messages if re.match(r"step \d+/10  loss ", m)]
    assert [int(m.split()[1].split("/")[0]) for m in progress] == list(range(1, 11))
    assert any(m.startswith("step 5: dlogZ=") for m in messages)
    assert "\r" not in out.getvalue() and "Epoch 0" not in out.getvalue()  # no tqdm bar was drawn


def script_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_train_script_piped_to_a_file_writes_one_line_every_two_steps(tmp_path):
    log = tmp_path / "train.out"
    with log.open("w") as out:
        proc = subprocess.run(
            [sys.executable, "scripts/train.py", *SCRIPT_ARGS, f"paths.root={tmp_path}"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=script_env(),
            timeout=600,
        )
    text = log.read_text()
    assert proc.returncode == 0, text[-2000:]
    assert "\r" not in text
    assert progress_steps(text) == list(range(2, 101, 2))
    assert re.search(r"- step 50: dlogZ=\S+  dlogZ_rw=", text)
    assert len(text) < 20_000  # the bar's redraws made a 100-step log of this run about 17 kB


@pytest.mark.slow
def test_train_script_on_a_terminal_draws_the_bar(tmp_path):
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "scripts/train.py", *SCRIPT_ARGS, f"paths.root={tmp_path}"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env=script_env(),
    )
    os.close(follower)
    chunks, deadline = [], time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    text = b"".join(chunks).decode(errors="replace")
    assert "\r" in text and "Epoch 0: 100%" in text and "loss=" in text
    assert progress_steps(text) == []

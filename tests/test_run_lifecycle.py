"""A run directory's life on a shared cluster: one process at a time trains in it (an OS lock that dies with its
holder), a refused command writes nothing there, SIGTERM and Ctrl-C stop after a step with a checkpoint and the same
command resumes bit for bit, a kill between a checkpoint and the next row loses no row, and damaged files, a
read-only or full disk and a checkpoint of another model are one line each, with nothing half-written."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, compose_cfg

from sampler.analysis.runs import load_run
from sampler.energies.gaussian import DiagonalGaussian
from sampler.training.callbacks import StopSignals
from sampler.training.checkpointing import find_resume_checkpoint
from sampler.training.config_check import ConfigError
from sampler.training.manifest import write_json
from sampler.training.metrics_csv import COLUMNS, MetricsCSV
from sampler.training.run import (
    RunDirError,
    RunLock,
    find_unfinished_twin,
    is_locked,
    main,
    train,
)

PY = sys.executable
HERE = Path(__file__).resolve().parent

#: Evaluations and checkpoints share steps 4, 8 (and 12, the end); a training row every step.
#: Plain on-policy TB: one log-reward call per training step, which the signal plans below count.
SHARED = [*TINY, "model=pis", "exploration=none", "trainer.max_steps=12", "eval.every=4", "checkpoint.every=4"]
SHARED.append("trainer.log_every_n_steps=1")
#: The lock file records the process that last held it: one refused after taking the lock rewrote it.
OWN_LOCK = ("run.lock",)
SIGNALING = ["energy=gaussian", f"energy._target_={__name__}.SignalingGaussian"]


#: The batch of a training step in TINY (evaluation batches are eval.K = 64).
TRAIN_BATCH = int(next(o for o in TINY if o.startswith("train.batch_size=")).split("=")[1])


class SignalingGaussian(DiagonalGaussian):
    """N(0, I) that signals its own process, as a scheduler or a user would, during a chosen training step (the
    n-th log-reward call on a training batch; one per step here): ``LIFECYCLE_SIGNALS="SIGTERM@6,SIGTERM@6"`` sends
    two in step 6; ``LIFECYCLE_KILL_AFTER=PATH`` sends SIGKILL at the first call once PATH exists."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.plan = [s.split("@") for s in os.environ.get("LIFECYCLE_SIGNALS", "").split(",") if s]
        self.kill_after = os.environ.get("LIFECYCLE_KILL_AFTER")
        self.n_steps = 0

    def log_reward(self, x):
        self.n_steps += x.shape[0] == TRAIN_BATCH
        for name, at in self.plan:
            if int(at) == self.n_steps and x.shape[0] == TRAIN_BATCH:
                os.kill(os.getpid(), signal.Signals[name])
                time.sleep(0.05)  # its handler runs before the next one is sent
        if self.kill_after and Path(self.kill_after).exists():
            os.kill(os.getpid(), signal.SIGKILL)
        return super().log_reward(x)


def snapshot(directory: Path, but: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path → bytes), except those named in ``but``."""
    files = (p for p in sorted(directory.rglob("*")) if p.is_file())
    return {str(p.relative_to(directory)): p.read_bytes() for p in files if str(p.relative_to(directory)) not in but}


def csv_rows_without_timing(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "eval_s"} for r in MetricsCSV(path).read()]


def params(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def exit_of(cfg, capsys) -> tuple[int, list[str]]:
    """``(exit status, stderr lines)`` of ``main(cfg)``, as ``scripts/train.py`` would end."""
    with pytest.raises(SystemExit) as stopped:
        main(cfg)
    return stopped.value.code, capsys.readouterr().err.strip().splitlines()


# ------------------------------------------------------------------------------------------------------ the lock
HOLDER = r"""
import fcntl, json, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
record = {"pid": os.getpid(), "host": sys.argv[2], "slurm_job_id": sys.argv[3] or None, "slurm_restart_count": 0,
          "since": "2026-01-02T03:04:05+00:00"}
os.ftruncate(fd, 0)
os.write(fd, json.dumps(record).encode())
print("locked", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def held(run_dir: Path, host: str = "node7", slurm_job: str = ""):
    """A live process on ``host`` (as SLURM job ``slurm_job``) holding ``run_dir``'s lock until the block ends."""
    run_dir.mkdir(parents=True, exist_ok=True)
    args = [PY, "-c", HOLDER, str(run_dir / "run.lock"), host, slurm_job]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def busy(run_dir: Path, proc, host: str = "node7", job: str = "") -> str:
    who = f"pid {proc.pid} on {host} since 2026-01-02T03:04:05+00:00" + (f", SLURM job {job}" if job else "")
    return (
        f"another process is training in {run_dir} ({who}); wait for it to finish, stop it, "
        "or choose another run directory"
    )


@pytest.mark.parametrize(
    "record",
    [
        {"pid": os.getpid(), "host": socket.gethostname()},  # this process's own PID (PID 1 in a container)
        {"pid": 1, "host": socket.gethostname()},
        {"pid": 4321, "host": "another-node", "slurm_job_id": "77"},  # a requeue onto another node
        "not json at all",
    ],
    ids=["own-pid", "pid-1", "other-host", "garbled"],
)
def test_a_lock_file_whose_holder_is_gone_does_not_block(tmp_path, record):
    lock_file = tmp_path / "run.lock"
    lock_file.write_text(record if isinstance(record, str) else json.dumps(record))
    assert not is_locked(tmp_path)
    with RunLock(tmp_path):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
        assert is_locked(tmp_path)
    assert lock_file.exists() and not is_locked(tmp_path)  # the file stays; the lock went with its holder


def test_a_live_holder_blocks_with_one_line_naming_it_and_frees_the_directory_when_it_dies(tmp_path):
    with held(tmp_path) as proc:
        assert is_locked(tmp_path)
        with pytest.raises(RunDirError) as err:
            RunLock(tmp_path).acquire()
        assert str(err.value) == busy(tmp_path, proc)
    with RunLock(tmp_path):  # the holder has exited (as if killed): its lock file blocks nothing
        pass


def test_a_requeued_slurm_job_takes_its_run_over_from_its_earlier_incarnation(tmp_path, monkeypatch):
    # The earlier incarnation's lock outlives it (its node's NFS lease has not expired): SLURM runs one incarnation
    # of a job at a time, so a holder with this job id and an older restart count is dead.
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with held(tmp_path, slurm_job="4242") as proc:
        monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)  # the same incarnation: a second process of it
        with pytest.raises(RunDirError) as err:
            RunLock(tmp_path).acquire()
        assert str(err.value) == busy(tmp_path, proc, job="4242")

        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # requeued once
        old_inode = (tmp_path / "run.lock").stat().st_ino
        assert not is_locked(tmp_path)  # nor does the old holder hide an unfinished twin from the requeued job
        with RunLock(tmp_path):
            record = json.loads((tmp_path / "run.lock").read_text())
            assert (record["pid"], record["slurm_job_id"], record["slurm_restart_count"]) == (os.getpid(), "4242", 1)
            assert (tmp_path / "run.lock").stat().st_ino != old_inode
            assert proc.poll() is None
        monkeypatch.setenv("SLURM_JOB_ID", "999")  # another job sees the new lock, not the stale one
        with RunLock(tmp_path):
            pass


def test_an_unfinished_twin_held_by_a_live_process_is_not_continued(tmp_path):
    resolved = {"seed": 0, "paths": {"run_dir": "x"}}
    twin = tmp_path / "2026-01-01_00-00-00-000000"
    (twin / "checkpoints").mkdir(parents=True)
    (twin / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (twin / "config_resolved.yaml").write_text("seed: 0\npaths:\n  run_dir: elsewhere\n")
    with held(twin):
        assert find_unfinished_twin(tmp_path / "new", resolved) is None
    assert find_unfinished_twin(tmp_path / "new", resolved) == twin


RACER = r"""
import sys, time
from pathlib import Path
from sampler.training.run import RunDirError, RunLock
root, me, other, rounds = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
(root / f"ready_{me}").touch()
while not (root / "go").exists():
    time.sleep(0.001)
start = float((root / "go").read_text())
for i in range(rounds):
    run_dir = root / f"round{i}"
    while time.time() < start + 0.25 * i:
        pass
    lock = RunLock(run_dir)
    try:
        lock.acquire()
    except RunDirError as err:
        (run_dir / f"{me}.refused").write_text(str(err))
        continue
    (run_dir / f"{me}.acquired").touch()
    while not list(run_dir.glob(f"{other}.*")):  # hold until the other has tried
        time.sleep(0.001)
    lock.release()
"""


@pytest.mark.slow
def test_two_processes_entering_at_the_same_instant_one_trains_the_other_is_refused(tmp_path):
    rounds = 40
    for i in range(rounds):
        (tmp_path / f"round{i}").mkdir()
        if i % 2:  # a lock file left by a dead run, as well as none at all
            (tmp_path / f"round{i}" / "run.lock").write_text(json.dumps({"pid": 1, "host": "gone"}))
    procs = [
        subprocess.Popen([PY, "-c", RACER, str(tmp_path), me, other, str(rounds)], cwd=ROOT)
        for me, other in (("a", "b"), ("b", "a"))
    ]
    deadline = time.time() + 300
    while not all((tmp_path / f"ready_{me}").exists() for me in "ab") and time.time() < deadline:
        time.sleep(0.05)
    (tmp_path / "go").write_text(str(time.time() + 0.5))
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    for i in range(rounds):
        outcomes = sorted(p.name for p in (tmp_path / f"round{i}").glob("[ab].*"))
        assert sorted(o.split(".")[1] for o in outcomes) == ["acquired", "refused"], (i, outcomes)
        refused = next((tmp_path / f"round{i}").glob("*.refused")).read_text()
        assert refused.startswith(f"another process is training in {tmp_path / f'round{i}'} (pid ")


# --------------------------------------------------------------------------------- a refused command writes nothing
def test_a_refused_command_leaves_the_running_runs_files_byte_identical(tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(compose_cfg(TINY, run_dir))
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
    with held(run_dir) as proc:
        before = snapshot(run_dir)
        status, err = exit_of(compose_cfg([*TINY, "loss=vargrad"], run_dir), capsys)
        assert (status, err) == (2, [f"error: {busy(run_dir, proc)}"])
        assert snapshot(run_dir) == before


def test_a_different_config_is_refused_before_anything_is_written(tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(compose_cfg(TINY, run_dir))
    before = snapshot(run_dir, but=OWN_LOCK)
    status, err = exit_of(compose_cfg([*TINY, "loss=vargrad"], run_dir), capsys)
    assert status == 2 and len(err) == 1 and "holds a run with a different config (loss.name" in err[0]
    assert snapshot(run_dir, but=OWN_LOCK) == before


@pytest.fixture
def default_signal_handlers():
    """The handlers a fresh ``python scripts/train.py`` starts with (earlier tests in the same pytest process may have
    left others installed, e.g. by libraries that register their own); restored afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


# ------------------------------------------------------------------------------------------------ SIGTERM, Ctrl-C
def test_stop_signals_take_only_default_handlers_and_a_second_signal_is_the_default_again(default_signal_handlers):
    seen = []

    def requeue(signum, frame):  # as submitit's handler: not ours to replace
        seen.append(signum)

    previous = signal.signal(signal.SIGTERM, requeue)
    try:
        with StopSignals() as stop:
            assert signal.getsignal(signal.SIGTERM) is requeue
            stop.install()
            assert signal.getsignal(signal.SIGTERM) is requeue
            os.kill(os.getpid(), signal.SIGTERM)
            wait_until(lambda: seen)
            assert stop.received is None
        assert signal.getsignal(signal.SIGTERM) is requeue
    finally:
        signal.signal(signal.SIGTERM, previous)

    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        wait_until(lambda: stop.received)
        assert stop.received == signal.SIGINT
        assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL  # a second Ctrl-C ends the process at once
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.001)


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_the_same_command_resumes_bit_for_bit(
    tmp_path, capsys, monkeypatch, sig, status, default_signal_handlers
):
    cfg = compose_cfg([*SHARED, *SIGNALING], tmp_path / "uninterrupted")
    reference, _ = train(cfg)

    run_dir = tmp_path / "interrupted"
    cfg = compose_cfg([*SHARED, *SIGNALING], run_dir)
    monkeypatch.setenv("LIFECYCLE_SIGNALS", f"{sig.name}@6")
    code, err = exit_of(cfg, capsys)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    step = manifest["interrupted"]["step"]
    assert step == 6  # the step during which the signal came: not a checkpoint step of its own
    assert code == status
    resume = "checkpoint saved — run the same command again to resume"
    assert err[-1] == f"error: terminated by {sig.name} at step {step}; {resume}"
    assert manifest["interrupted"]["signal"] == sig.name and manifest["end_time"] is None
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step
    assert not (run_dir / "metrics.json").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    monkeypatch.delenv("LIFECYCLE_SIGNALS")
    resumed, _ = train(cfg)
    assert resumed == reference
    a, b = tmp_path / "uninterrupted", run_dir
    assert csv_rows_without_timing(a / "metrics.csv") == csv_rows_without_timing(b / "metrics.csv")
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert "interrupted" not in manifest and manifest["end_time"] is not None
    assert manifest["resumes"][-1]["from_step"] == step
    assert manifest["resumes"][-1]["interrupted"]["signal"] == sig.name


# -------------------------------------------------------------------------------------------- metrics.csv on resume
def test_truncate_keeps_every_row_up_to_the_checkpoint_step_and_drops_unreadable_lines(tmp_path):
    csv_file = MetricsCSV(tmp_path / "metrics.csv")
    csv_file.reset()
    for step in range(1, 7):
        csv_file.append(step, "train", {"loss": 1.0 / step})
        if step % 3 == 0:
            csv_file.append(step, "eval", {"dlogZ": 0.5, "eval_s": 0.1})
    text = (tmp_path / "metrics.csv").read_text()
    lines = text.splitlines()
    damaged = "\n".join([lines[0], lines[1], "7,tra\x00in,,", lines[2], "garbage", *lines[3:]]) + "\n7,train,0.1"
    (tmp_path / "metrics.csv").write_text(damaged)

    assert csv_file.truncate(3) == 3
    rows = [(int(r["step"]), r["kind"]) for r in csv_file.read()]
    assert rows == [(1, "train"), (2, "train"), (3, "train"), (3, "eval")]
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == ",".join(COLUMNS)


def test_a_run_killed_after_a_checkpoint_that_shares_its_step_with_an_evaluation_keeps_every_row(tmp_path, caplog):
    # The state a kill at step 9 leaves: rows written up to there (here: up to 12) and a half-written line, and step
    # 8's checkpoint, written after step 8's evaluation row. The same command keeps that row and rewrites the rest
    # exactly.
    run_dir = tmp_path / "run"
    cfg = compose_cfg(SHARED, run_dir)
    reference, _ = train(cfg)
    rows = csv_rows_without_timing(run_dir / "metrics.csv")
    ckpts = run_dir / "checkpoints"
    os.replace(ckpts / "previous.ckpt", ckpts / "last.ckpt")
    assert find_resume_checkpoint(ckpts)[1]["global_step"] == 8
    (run_dir / "metrics.json").unlink()
    with (run_dir / "metrics.csv").open("a") as f:
        f.write("13,train,0.12")
    caplog.clear()
    resumed, _ = train(cfg)
    assert resumed == reference
    assert csv_rows_without_timing(run_dir / "metrics.csv") == rows
    assert ("8", "eval") in {(r["step"], r["kind"]) for r in rows}
    assert any("dropped 1 unreadable line" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_a_sigkilled_script_resumes_with_every_metrics_row_of_an_uninterrupted_run(tmp_path):
    args = [*SHARED, *SIGNALING, "trainer.max_steps=16"]
    run_script("scripts/train.py", *args, f"hydra.run.dir={tmp_path / 'uninterrupted'}")
    run_dir = tmp_path / "killed"
    env = {"LIFECYCLE_KILL_AFTER": str(run_dir / "checkpoints" / "last.ckpt")}  # at step 5: after step 4's
    killed = run_script("scripts/train.py", *args, f"hydra.run.dir={run_dir}", env=env, check=False)
    assert killed.returncode == -signal.SIGKILL
    assert {r["step"] for r in MetricsCSV(run_dir / "metrics.csv").read() if r["kind"] == "eval"} == {"4"}
    run_script("scripts/train.py", *args, f"hydra.run.dir={run_dir}")
    a, b = tmp_path / "uninterrupted", run_dir
    assert json.loads((b / "manifest.json").read_text())["resumes"][0]["from_step"] == 4
    assert csv_rows_without_timing(a / "metrics.csv") == csv_rows_without_timing(b / "metrics.csv")
    assert (a / "metrics.json").read_text() == (b / "metrics.json").read_text()


# ------------------------------------------------------------------------------------ damaged files in a run directory
def finished_run(tmp_path: Path, *overrides: str) -> tuple[Path, dict]:
    run_dir = tmp_path / "run"
    metrics, _ = train(compose_cfg([*TINY, *overrides], run_dir))
    return run_dir, metrics


def test_a_garbled_manifest_is_rebuilt_saying_so_and_the_run_resumes(tmp_path, caplog):
    run_dir, metrics = finished_run(tmp_path)
    (run_dir / "manifest.json").write_text('{"start_time": "2026-01-0')
    caplog.clear()
    again, _ = train(compose_cfg(TINY, run_dir))
    assert again == metrics
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["rebuilt"]["reason"] == "manifest.json was unreadable (JSONDecodeError)"
    assert manifest["start_time"] is None and manifest["end_time"] is not None
    assert [r["from_step"] for r in manifest["resumes"]] == [5]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "manifest" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0]


def test_a_garbled_saved_config_is_one_line_and_changes_nothing(tmp_path, capsys):
    run_dir, _ = finished_run(tmp_path)
    (run_dir / "config_resolved.yaml").write_text("seed: [0\nloss: {name: tb\n")
    before = snapshot(run_dir, but=OWN_LOCK)
    status, err = exit_of(compose_cfg(TINY, run_dir), capsys)
    assert status == 2 and len(err) == 1
    assert err[0].startswith(f"error: cannot check the config of {run_dir}: config_resolved.yaml is unreadable (")
    assert err[0].endswith("); restore it, or delete it to resume with this command's config")
    assert snapshot(run_dir, but=OWN_LOCK) == before


def test_a_checkpoint_of_another_model_is_one_line_naming_the_first_mismatch(tmp_path, capsys):
    run_dir, _ = finished_run(tmp_path)
    (run_dir / "config_resolved.yaml").unlink()  # as the message above suggests: resume with this command's config
    before = snapshot(run_dir, but=OWN_LOCK)
    status, err = exit_of(compose_cfg([*TINY, "model.hidden_dim=32"], run_dir), capsys)
    assert status == 2 and len(err) == 1, err
    assert re.fullmatch(
        rf"error: checkpoint {re.escape(str(run_dir / 'checkpoints' / 'last.ckpt'))} does not fit this config's "
        r"model: \S+ has shape \[\d+(, \d+)*\] there but \[\d+(, \d+)*\] in this config's model \(and \d+ more\); "
        rf"resume with the config it was trained with, or delete {re.escape(str(run_dir / 'checkpoints'))} to "
        "start afresh",
        err[0],
    ), err[0]
    assert snapshot(run_dir, but=OWN_LOCK) == before


# ----------------------------------------------------------------------------------- read-only and full file systems
@pytest.fixture
def tmpfs(tmp_path):
    """``mount(name, options) -> Path``: a tmpfs mounted at ``tmp_path/name`` (unmounted afterwards)."""
    mounted = []

    def mount(name: str, options: str) -> Path:
        where = tmp_path / name
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.decode().strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_read_only_run_directory_or_parent_is_one_line(tmpfs, capsys):
    ro = tmpfs("ro", "ro,size=1m")
    status, err = exit_of(compose_cfg(TINY, ro), capsys)
    assert status == 2 and len(err) == 1
    assert err[0].startswith(f"error: cannot write {ro / 'run.lock'}: Read-only file system; ")
    status, err = exit_of(compose_cfg(TINY, ro / "run"), capsys)
    assert status == 2 and len(err) == 1
    assert err[0].startswith(f"error: cannot write {ro / 'run'}: Read-only file system; ")


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path, tmpfs, capsys):
    # Room for two checkpoints and the small files, not three: the third write (the temporary file beside
    # last.ckpt and previous.ckpt) fills the disk.
    overrides = [*TINY, "model.hidden_dim=32", "checkpoint.every=1", "trainer.max_steps=6", "eval.every=100"]
    train(compose_cfg([*overrides, "trainer.max_steps=1"], tmp_path / "probe"))
    size = (tmp_path / "probe" / "checkpoints" / "last.ckpt").stat().st_size
    full = tmpfs("full", f"size={(5 * size // 2 + 48_000) // 4096 * 4096}")
    status, err = exit_of(compose_cfg(overrides, full / "run"), capsys)
    checkpoint = full / "run" / "checkpoints" / "last.ckpt"
    assert (status, err) == (
        2,
        [
            f"error: cannot write {checkpoint}: no space left on device; free some space and run the same command "
            "again to resume"
        ],
    )
    assert not list(full.rglob("*.tmp"))
    path, ckpt = find_resume_checkpoint(checkpoint.parent)
    assert path == checkpoint and ckpt["global_step"] == 2
    assert (full / "run" / "manifest.json").read_text().endswith("}\n")


def test_a_full_disk_leaves_metrics_csv_and_json_files_as_they_were(tmpfs):
    full = tmpfs("full", "size=64k")
    csv_file = MetricsCSV(full / "metrics.csv")
    csv_file.reset()
    csv_file.append(1, "train", {"loss": 0.5})
    write_json(full / "manifest.json", {"seed": 0})
    before = snapshot(full)
    with open(full / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):  # fill every free page
        while True:
            f.write(b"\0" * 4096)
    before["filler"] = (full / "filler").read_bytes()
    for write, name in [
        (lambda: csv_file.append(2, "train", {"loss": 0.25, "phase": "forward" * 2000}), "metrics.csv"),
        (lambda: csv_file.append(2, "eval", {"dlogZ": 0.1}, replace=True), "metrics.csv"),
        (lambda: write_json(full / "manifest.json", {"seed": 0, "pad": "x" * 20000}), "manifest.json"),
    ]:
        with pytest.raises(OSError) as err:
            write()
        assert (err.value.errno, err.value.filename) == (errno.ENOSPC, str(full / name))
    assert snapshot(full) == before


# ------------------------------------------------------------------------------------------- scripts/train.py itself
def run_script(*args: str, env: dict | None = None, check: bool = True, timeout: float = 600):
    proc = subprocess.run(
        [PY, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(HERE), **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.mark.slow
def test_sigterm_to_the_script_exits_143_with_one_line_and_the_same_command_resumes_to_the_same_metrics(tmp_path):
    args = [*SHARED, "trainer.max_steps=40", "train.batch_size=256", "trainer.log_every_n_steps=5"]
    run_script("scripts/train.py", *args, f"hydra.run.dir={tmp_path / 'uninterrupted'}")

    run_dir = tmp_path / "run"
    cmd = [PY, "scripts/train.py", *args, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "last.ckpt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # as `scancel`, a pre-empting scheduler or `kill` does
    out, err = proc.communicate(timeout=300)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    step = manifest.get("interrupted", {}).get("step")
    assert proc.returncode == 143, err[-3000:]
    message = f"error: terminated by SIGTERM at step {step}; checkpoint saved — run the same command again to resume"
    assert err.strip().splitlines()[-1] == message and "Traceback" not in err
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step < 40

    run_script(*cmd[1:])
    assert (run_dir / "metrics.json").read_text() == (tmp_path / "uninterrupted" / "metrics.json").read_text()
    assert json.loads((run_dir / "manifest.json").read_text())["resumes"][-1]["from_step"] == step


@pytest.mark.slow
def test_a_second_sigterm_ends_the_script_at_once(tmp_path):
    proc = run_script(
        "scripts/train.py",
        *SHARED,
        *SIGNALING,
        f"hydra.run.dir={tmp_path}",
        env={"LIFECYCLE_SIGNALS": "SIGTERM@3,SIGTERM@3"},  # the second while the first waits for its step to end
        check=False,
    )
    assert proc.returncode == -signal.SIGTERM, proc.stderr[-3000:]
    assert "interrupted" not in json.loads((tmp_path / "manifest.json").read_text())


@pytest.mark.slow
def test_the_script_refused_by_a_live_holder_writes_nothing_and_hydra_files_are_written_after_the_lock(tmp_path):
    run_dir = tmp_path / "run"
    run_script("scripts/train.py", *TINY, "loss=subtb", f"hydra.run.dir={run_dir}")
    run = load_run(run_dir)
    assert run.choices["loss"] == "subtb" and "loss=subtb" in run.overrides
    assert {p.name for p in (run_dir / ".hydra").iterdir()} == {"config.yaml", "hydra.yaml", "overrides.yaml"}
    with held(run_dir) as holder:
        before = {k: v for k, v in snapshot(run_dir).items() if k != "train.log"}  # Hydra appends to its log
        proc = run_script("scripts/train.py", *TINY, "loss=vargrad", f"hydra.run.dir={run_dir}", check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == f"error: {busy(run_dir, holder)}"
        assert {k: v for k, v in snapshot(run_dir).items() if k != "train.log"} == before


@pytest.mark.slow
def test_a_multirun_leaves_hydra_files_in_every_job_directory(tmp_path):
    run_script("scripts/train.py", "-m", "seed=0,1", *TINY, f"paths.root={tmp_path}")
    jobs = sorted(p.parent.parent for p in (tmp_path / "multiruns").rglob(".hydra/hydra.yaml"))
    assert [j.name for j in jobs] == ["seed=0", "seed=1"]
    for seed, job in enumerate(jobs):
        run = load_run(job)
        assert run.finished and run.choices["loss"] == "tb" and f"seed={seed}" in run.overrides
        assert (job / ".hydra" / "config.yaml").is_file()


@pytest.mark.slow
def test_the_script_in_a_read_only_place_is_one_line(tmpfs):
    ro = tmpfs("ro", "ro,size=1m")
    for where in (ro, ro / "run"):
        proc = run_script("scripts/train.py", *TINY, f"hydra.run.dir={where}", check=False)
        assert proc.returncode == 2, proc.stderr[-3000:]
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith(f"error: cannot write {where}: Read-only file system; ")


def test_a_finished_run_without_its_checkpoints_is_reported_not_retrained(tiny_cfg, tmp_path):
    # A finished run whose small files were copied elsewhere (no checkpoints): the same command reports it.
    run = tmp_path / "run"
    metrics, _ = train(tiny_cfg(run_dir=run))
    shutil.rmtree(run / "checkpoints")
    before = (run / "metrics.csv").read_bytes()
    again, objects = train(tiny_cfg(run_dir=run))
    assert again == metrics and objects["module"] is None
    assert (run / "metrics.csv").read_bytes() == before and not (run / "checkpoints").exists()
    with pytest.raises(ConfigError, match="different config"):
        train(tiny_cfg("train.lr_policy=0.002", run_dir=run))
    longer, objects = train(tiny_cfg("trainer.max_steps=6", run_dir=tmp_path / "other"))
    assert longer["step"] == 6 and objects["module"] is not None

"""Sweeps through the launcher group, run as a user runs them: a real SLURM cluster on this machine
(`scripts/slurm/start_slurm.sh`), a job requeued mid-training that ends exactly as an uninterrupted one, submitit's
local executor, sweeps started together, and the one-line errors for a launcher that cannot work.

The SLURM tests skip when no controller on this machine answers, unless SAMPLER_REQUIRE_SLURM=1 (CI sets it, so
that a cluster which failed to start fails them). They never submit to a controller on another machine."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CONF, ROOT, TINY
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sampler.app.launchers import slurm_problem
from sampler.training.run import is_locked

PY = sys.executable
#: One CPU per job, so that with SLURM_CPUS=8 (as in .ci/run) the jobs of a test run side by side.
ONE_CPU = "hydra.launcher.cpus_per_task=1"


def run_script(*args: str, env: dict | None = None, timeout: float = 300, check: bool = True):
    proc = subprocess.run([PY, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


def start_train(*args: str, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([PY, "scripts/train.py", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, f"{proc.args} failed ({proc.returncode}):\n{log.read_text()[-4000:]}"


def wait_for(condition, what: str, timeout: float = 120, show=lambda: ""):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} {show()}")


def slurm(*args: str) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, check=True, timeout=30).stdout


def local_cluster_problem() -> str | None:
    """Why the SLURM tests cannot run here, or None: they need a controller on this machine that answers."""
    problem = slurm_problem()
    if problem:
        return problem
    m = re.search(r" at (\S+) is UP", slurm("scontrol", "ping"))
    if not m or m.group(1) != socket.gethostname().split(".")[0]:
        return f"the SLURM controller that answers runs on {m and m.group(1)}, not here; these tests requeue jobs"
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    problem = local_cluster_problem()
    if problem is None:
        return
    message = f"{problem} — start a cluster on this machine with `bash scripts/slurm/start_slurm.sh` (as root)"
    if os.environ.get("SAMPLER_REQUIRE_SLURM") == "1":
        pytest.fail(f"SAMPLER_REQUIRE_SLURM=1 but {message}")
    pytest.skip(message)


def release_when_requeued(job_id: str) -> None:
    """A requeued job may start again only after SLURM's delay (about 2 min): once it is pending, start it now."""
    wait_for(lambda: slurm("squeue", "-h", "-j", job_id, "-o", "%T").strip() == "PENDING", f"job {job_id} requeued")
    slurm("scontrol", "update", f"JobId={job_id}", "StartTime=now")


def mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:  # between the two renames of an atomic checkpoint write
        return None


def table_column(markdown: str, name: str) -> list[str]:
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")] for line in markdown.splitlines() if line[:1] == "|"
    ]
    column = rows[0].index(name)
    return [row[column] for row in rows[2:]]  # after the header and the |---| line


def test_slurm_sweep_of_tb_and_subtb_over_three_seeds_leaves_one_run_directory_per_job(tmp_path, slurm_cluster):
    # A README sweep with a tiny budget: `train.py -m launcher=slurm loss=tb,subtb energy=gmm25 seed=0,1,2`.
    run_script(
        "scripts/train.py",
        "-m",
        "launcher=slurm",
        "loss=tb,subtb",
        "energy=gmm25",
        "seed=0,1,2",
        *TINY,
        ONE_CPU,
        f"paths.root={tmp_path}",
        timeout=600,
    )
    (sweep,) = (tmp_path / "multiruns").iterdir()
    runs = sorted(p.parent for p in sweep.rglob("metrics.json"))
    labels = sorted((re.search(r"loss=(\w+)", r.parent.name).group(1), r.name) for r in runs)
    assert labels == [(loss, f"seed={s}") for loss in ("subtb", "tb") for s in range(3)]
    assert len({r.parent for r in runs}) == 2 and all("launcher" not in r.parent.name for r in runs)

    manifests = [json.loads((r / "manifest.json").read_text()) for r in runs]
    job_ids = [m["slurm_job_id"] for m in manifests]
    assert all(job_ids) and len(set(job_ids)) == 6, job_ids
    # argv is submitit's under SLURM; the manifest keeps the job's own overrides
    assert all(
        f"seed={r.name[5:]}" in m["overrides"] and "launcher=slurm" in m["overrides"] for r, m in zip(runs, manifests)
    )
    completed = sorted(f"{j}|COMPLETED" for j in job_ids)
    sacct = ["sacct", "-n", "-X", "-P", "-o", "JobIDRaw,State", "-j", ",".join(job_ids)]
    # The sweep returns when the result files are written; accounting records the end a moment later.
    wait_for(
        lambda: sorted(slurm(*sacct).split()) == completed,
        "sacct to list the jobs COMPLETED",
        60,
        lambda: slurm(*sacct),
    )
    assert list((sweep / ".submitit").iterdir()), "submitit keeps its job files in the sweep directory"

    table = run_script("scripts/summarize.py", str(sweep)).stdout
    assert table_column(table, "n") == ["3", "3"], table


def test_a_requeued_slurm_job_resumes_in_its_run_directory_and_ends_as_an_uninterrupted_one(tmp_path, slurm_cluster):
    # Two identical single-job sweeps side by side: one runs undisturbed; the other is interrupted twice mid-training
    # — by submitit's time-out path (USR2, as SLURM sends before the time limit: submitit requeues the job) and by
    # SLURM itself (`scontrol requeue`, as on preemption: the job is killed and requeued). With timeout_min ≤ 10
    # submitit counts the USR2 as a time-out, so the requeue also needs max_num_timeout > 0 (the preset's 3).
    steps = 400
    args = [
        "-m",
        "launcher=slurm",
        *TINY,
        f"trainer.max_steps={steps}",
        f"eval.every={steps}",
        "checkpoint.every=10",
        ONE_CPU,
        "hydra.launcher.timeout_min=5",
        "hydra.launcher.signal_delay_s=60",
    ]
    roots = {name: tmp_path / name for name in ("uninterrupted", "requeued")}
    procs = {
        name: start_train(*args, f"paths.root={root}", log=tmp_path / f"{name}.log") for name, root in roots.items()
    }

    last = wait_for(lambda: next(roots["requeued"].glob("multiruns/*/*/seed=0/checkpoints/last.ckpt"), None), "a ckpt")
    run_dir = last.parents[1]
    manifest = run_dir / "manifest.json"
    job_id = json.loads(manifest.read_text())["slurm_job_id"]

    slurm("scancel", "--signal=USR2", job_id)
    release_when_requeued(job_id)
    wait_for(lambda: len(json.loads(manifest.read_text())["resumes"]) == 1, "the first resume")
    resumed_at = mtime(last)
    wait_for(lambda: mtime(last) not in (resumed_at, None), "a checkpoint after the first resume")
    slurm("scontrol", "requeue", job_id)
    release_when_requeued(job_id)

    for name, proc in procs.items():
        finish(proc, tmp_path / f"{name}.log", timeout=400)
    (reference,) = roots["uninterrupted"].glob("multiruns/*/*/seed=0")
    assert reference.relative_to(roots["uninterrupted"]).parts[2:] == run_dir.relative_to(roots["requeued"]).parts[2:]
    assert list(run_dir.parents[1].glob("*/*/metrics.json")) == [run_dir / "metrics.json"], "one run directory"

    resumes = json.loads(manifest.read_text())["resumes"]
    starts = [r["from_step"] for r in resumes]
    assert len(starts) == 2 and 0 < starts[0] < starts[1] < steps, resumes
    assert (run_dir / "metrics.json").read_text() == (reference / "metrics.json").read_text()
    assert not is_locked(run_dir)  # the lock file stays; no process holds it
    sacct = ["sacct", "-n", "-X", "-P", "--duplicates", "-o", "State", "-j", job_id]
    requeued = ["REQUEUED", "REQUEUED", "COMPLETED"]
    wait_for(lambda: slurm(*sacct).split() == requeued, "sacct to list the requeues", 60, lambda: slurm(*sacct))
    log = "".join(p.read_text() for p in sorted((run_dir.parents[1] / ".submitit").rglob("*_log.*")))
    assert "this job is timed-out" in log and "remaining timeouts" in log, log[-3000:]


def test_two_local_launcher_sweeps_started_together_finish_in_distinct_directories(tmp_path):
    # launcher=local: submitit's local executor runs the jobs as processes of this machine. Two sweeps started in
    # the same instant (most often in the same second) must not share a sweep directory.
    seeds = {"0,1": ["seed=0", "seed=1"], "2": ["seed=2"]}
    procs = [
        start_train("-m", "launcher=local", f"seed={s}", *TINY, f"paths.root={tmp_path}", log=tmp_path / f"{s}.log")
        for s in seeds
    ]
    for s, proc in zip(seeds, procs):
        finish(proc, tmp_path / f"{s}.log")
    sweeps = sorted((tmp_path / "multiruns").iterdir())
    assert len(sweeps) == 2, sweeps
    runs = sorted(sorted(p.parent.name for p in sweep.rglob("metrics.json")) for sweep in sweeps)
    assert runs == sorted(seeds.values()), runs
    for sweep in sweeps:
        assert list((sweep / ".submitit").rglob("*_result.pkl")), "the jobs ran through submitit"
        manifests = [json.loads(p.read_text()) for p in sweep.rglob("manifest.json")]
        assert all(m["slurm_job_id"] is None for m in manifests)


def test_the_launcher_presets_ask_for_what_they_promise():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cpu = compose(config_name="config", overrides=["launcher=slurm"], return_hydra_config=True)
        gpu = compose(config_name="config", overrides=["launcher=slurm_gpu"], return_hydra_config=True)
        local = compose(config_name="config", overrides=["launcher=local"], return_hydra_config=True)
        none = compose(config_name="config", return_hydra_config=True)
    assert cpu.hydra.launcher._target_.endswith("SlurmLauncher") and cpu.trainer.accelerator == "cpu"
    assert gpu.hydra.launcher._target_.endswith("SlurmLauncher") and gpu.trainer.accelerator == "gpu"
    assert gpu.hydra.launcher.gpus_per_node == 1 and not cpu.hydra.launcher.gpus_per_node
    for cfg in (cpu, gpu):
        assert cfg.hydra.launcher.max_num_timeout > 0  # else a timed-out job is not requeued
        folder = OmegaConf.to_container(cfg.hydra.launcher)["submitit_folder"]
        assert folder.startswith("${hydra.sweep.dir}/")  # fresh per sweep: job ids restart with a new cluster
    assert local.hydra.launcher._target_.endswith("LocalLauncher")
    assert none.hydra.launcher._target_.endswith("BasicLauncher")


def fake_slurm_bin(tmp_path: Path, scontrol: str | None) -> str:
    """A PATH holding only a fake `sbatch` (which records that it was called) and, if given, a fake `scontrol`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tools = {"sbatch": f"#!/bin/sh\ntouch {tmp_path}/submitted\n"}
    if scontrol is not None:
        tools["scontrol"] = scontrol
    for name, text in tools.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return str(bin_dir)


@pytest.mark.parametrize(
    "machine, expected",
    [
        ("no sbatch", r"no `sbatch` on PATH \(SLURM is not installed here, or not on PATH\)"),
        ("controller down", r"no SLURM controller answers \(`scontrol ping`: Slurmctld\(primary\) at vm is DOWN\)"),
    ],
)
@pytest.mark.parametrize("launcher", ["slurm", "slurm_gpu"])
def test_a_slurm_launcher_without_slurm_is_one_line_before_anything_is_submitted(tmp_path, launcher, machine, expected):
    down = "#!/bin/sh\necho 'Slurmctld(primary) at vm is DOWN'\nexit 1\n"
    if machine == "no sbatch":
        (tmp_path / "bin").mkdir()
        bin_dir = str(tmp_path / "bin")
    else:
        bin_dir = fake_slurm_bin(tmp_path, down)
    env = {**os.environ, "PATH": bin_dir}
    proc = run_script(
        "scripts/train.py", "-m", f"launcher={launcher}", "seed=0,1", f"paths.root={tmp_path}", env=env, check=False
    )
    assert proc.returncode == 2
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert re.fullmatch(rf"error: launcher={launcher}: {expected}; .*use launcher=local.*\n", proc.stderr), proc.stderr
    assert not (tmp_path / "submitted").exists() and not (tmp_path / "multiruns").exists()


@pytest.mark.parametrize("launcher", ["slurm", "local"])
def test_a_launcher_without_multirun_is_one_line(tmp_path, launcher):
    # Without -m Hydra ignores the launcher and would train here; say so instead.
    proc = run_script("scripts/train.py", f"launcher={launcher}", f"paths.root={tmp_path}", check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: launcher={launcher} launches the jobs of a sweep and needs -m")
    assert len(proc.stderr.splitlines()) == 1 and not tmp_path.joinpath("runs").exists()


def test_a_slurm_sweep_of_a_discrete_target_runs_its_objectives_as_jobs(tmp_path, slurm_cluster):
    # energy=hypergrid through the same launcher: the discrete model, objectives and run directories.
    grid = ["energy=hypergrid", "energy.height=6", "model.hidden_dim=32", "train.batch_size=8", "trainer.max_steps=4"]
    small = [*grid, "eval.every=4", "eval.K=100", "eval.plots=false", "checkpoint.every=4"]
    run_script(
        "scripts/train.py", "-m", "launcher=slurm", "loss=tb,db", "seed=0", *small, ONE_CPU, f"paths.root={tmp_path}",
        timeout=600,
    )  # fmt: skip
    (sweep,) = (tmp_path / "multiruns").iterdir()
    runs = sorted(p.parent for p in sweep.rglob("metrics.json"))
    assert sorted(re.search(r"loss=(\w+)", r.parent.name).group(1) for r in runs) == ["db", "tb"]
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["step"] == 4 and 0.0 <= metrics["l1_exact"] <= 2.0 and metrics["n_trajectories"] == 32
        assert json.loads((run / "manifest.json").read_text())["slurm_job_id"]

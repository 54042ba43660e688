"""The command-line contract, run as a user runs it: train/eval/sample scripts in fresh processes, a killed run
that resumes bit for bit, Hydra multirun directories, and the README's code."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY
from omegaconf import OmegaConf

from sampler.training.run import find_unfinished_twin

PY = sys.executable


def run_script(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([PY, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


def readme_block(marker: str, lang: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- {re.escape(marker)} -->\n```{lang}\n(.*?)```", text, re.S)
    assert m, f"README has no ```{lang} block after <!-- {marker} -->"
    return m.group(1)


def final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_a_killed_run_resumes_from_last_ckpt_bit_for_bit(tmp_path):
    # The user's view: kill a run, type the same command again; it continues the unfinished run directory.
    args = [
        "scripts/train.py",
        "trainer.max_steps=60",
        "model.T=20",
        "train.batch_size=64",
        "eval.every=20",
        "eval.K=200",
        "checkpoint.every=10",
        "eval.plots=false",
        "exploration=linear",
        "train.phases=both_ways",
        "trainer.enable_progress_bar=false",
    ]
    a_root, b_root = tmp_path / "uninterrupted", tmp_path / "interrupted"
    run_script(*args, f"paths.root={a_root}")

    proc = subprocess.Popen(
        [PY, *args, f"paths.root={b_root}"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while not list(b_root.glob("runs/*/checkpoints/last.ckpt")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up, as with a pre-empted job or a power cut
    proc.wait()
    assert not list(b_root.glob("runs/*/metrics.json")), "the run finished before it could be killed"

    run_script(*args, f"paths.root={b_root}")  # the same command again
    (a,), (b,) = list((a_root / "runs").iterdir()), list((b_root / "runs").iterdir())
    manifest = json.loads((b / "manifest.json").read_text())
    assert len(manifest["resumes"]) == 1 and 10 <= manifest["resumes"][0]["from_step"] < 60
    assert (a / "metrics.json").read_text() == (b / "metrics.json").read_text()
    pa, pb = final_params(a), final_params(b)
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    strip = [re.sub(r",[^,]*$", "", line) for line in (a / "metrics.csv").read_text().splitlines()]  # eval_s
    assert strip == [re.sub(r",[^,]*$", "", line) for line in (b / "metrics.csv").read_text().splitlines()]

    # A finished run is not continued: the same command once more would start a new run directory.
    resolved = OmegaConf.to_container(OmegaConf.load(b / "config_resolved.yaml"))
    assert find_unfinished_twin(b_root / "runs" / "new", resolved) is None
    (b / "metrics.json").unlink()
    assert find_unfinished_twin(b_root / "runs" / "new", resolved) == b


def test_a_corrupt_last_checkpoint_falls_back_to_the_previous_one(tmp_path):
    args = ["scripts/train.py", *TINY, "trainer.max_steps=10", "eval.every=10", f"hydra.run.dir={tmp_path}"]
    run_script(*args)
    ckpts = tmp_path / "checkpoints"
    assert (ckpts / "previous.ckpt").exists()
    (ckpts / "last.ckpt").write_bytes((ckpts / "last.ckpt").read_bytes()[:1000])  # a write cut short
    proc = run_script(*args)
    assert "corrupt or truncated" in proc.stdout + proc.stderr
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["resumes"][-1] == {**manifest["resumes"][-1], "from_step": 5, "checkpoint": "previous.ckpt"}


@pytest.mark.parametrize(
    "override, expected",
    [
        ("energy=gmm26", r"^error: energy=gmm26 is not an option; choose one of: .*gmm25"),
        ("model.hidden_dimm=32", r"^error: model\.hidden_dimm is not a config key; did you mean model\.hidden_dim\?"),
        ("loss=nope", r"^error: loss=nope is not an option; choose one of: .*fl_subtb"),
    ],
)
def test_hydra_rejects_unknown_options_and_keys(tmp_path, override, expected):
    proc = run_script("scripts/train.py", override, f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert re.search(expected, proc.stderr, re.S), proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_bad_value_is_one_line_and_exit_status_2(tmp_path):
    proc = run_script("scripts/train.py", "train.batch_size=-1", f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: train.batch_size must be a positive integer (got -1)"
    assert "Traceback" not in proc.stderr


def test_eval_script_reproduces_the_final_metrics_and_sample_script_writes_samples(tmp_path):
    run_dir = tmp_path / "run"
    run_script("scripts/train.py", *TINY, "energy=gmm9", f"hydra.run.dir={run_dir}")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    out = run_script("scripts/eval.py", f"ckpt={ckpt}", f"out={tmp_path / 'eval.json'}", f"plots={tmp_path}")
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    final = json.loads((run_dir / "metrics.json").read_text())
    evaluated.pop("eval_s", None)
    assert evaluated == final
    assert json.loads(out.stdout)["log_Z_rw"] == final["log_Z_rw"]
    assert list(tmp_path.glob("eval_samples_*.png"))

    other = json.loads(run_script("scripts/eval.py", f"ckpt={ckpt}", "seed=7", "K=100").stdout)
    assert other["eval_K"] == 100 and other["log_Z_rw"] != final["log_Z_rw"]

    for name in ("s.pt", "s.npy"):
        run_script("scripts/sample.py", f"ckpt={ckpt}", "n=123", f"out={tmp_path / name}", "batch=50")
    x = torch.load(tmp_path / "s.pt")
    assert x.shape == (123, 2) and torch.isfinite(x).all()

    nowhere = tmp_path / "none.ckpt"
    missing = run_script("scripts/eval.py", f"ckpt={nowhere}", check=False)
    assert missing.returncode == 2 and missing.stderr.strip() == f"error: checkpoint not found: {nowhere}"
    bad = run_script("scripts/sample.py", f"ckpt={ckpt}", "n=5", "out=x.txt", check=False)
    assert bad.returncode == 2 and "must end in .pt, .npy or .csv" in bad.stderr


def test_readme_core_example_runs_without_lightning_and_learns(tmp_path):
    code = readme_block("test:core-example", "python")
    assert "lightning" not in code and "hydra" not in code
    proc = subprocess.run(
        [PY, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r"dlogZ_rw=([\d.]+) modes covered=([\d.]+)", proc.stdout)
    assert m, proc.stdout
    assert float(m.group(1)) <= 0.1 and float(m.group(2)) == 1.0, proc.stdout
    assert "lightning" not in proc.stderr.lower()


def test_readme_commands_are_the_ones_ci_runs():
    setup = readme_block("ci:setup", "bash").strip()
    tests = readme_block("ci:test", "bash").strip()
    assert setup.startswith("python3 -m venv .venv") and "pip install -e '.[test]'" in setup
    assert setup.endswith("scripts/train.py")
    assert tests == ".venv/bin/python -m pytest"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "readme_block setup" in ci and "readme_block test" in ci


@pytest.mark.slow
def test_multirun_over_seeds_leaves_one_directory_per_seed(tmp_path):
    # The README's sweep command, with a tiny budget: `python scripts/train.py loss=subtb energy=funnel -m seed=0,1,2`.
    run_script(
        "scripts/train.py",
        "loss=subtb",
        "energy=funnel",
        "-m",
        "seed=0,1,2",
        *TINY,
        f"paths.root={tmp_path}",
        timeout=900,
    )
    sweeps = list((tmp_path / "multiruns").iterdir())
    assert len(sweeps) == 1
    runs = sorted(p.parent for p in sweeps[0].rglob("metrics.json"))
    assert [r.name for r in runs] == ["seed=0", "seed=1", "seed=2"]
    assert len({r.parent for r in runs}) == 1
    overrides = runs[0].parent.name
    assert "loss=subtb" in overrides and "energy=funnel" in overrides and "seed" not in overrides
    metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
    assert metrics[0] != metrics[1] != metrics[2]


def test_benchmark_script_writes_the_json_schema(tmp_path):
    out = tmp_path / "bench.json"
    run_script(
        "scripts/benchmark.py",
        "--presets",
        "tb,mle",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--batch-size",
        "32",
        "--out",
        str(out),
    )
    result = json.loads(out.read_text())
    assert {"threads", "torch", "python"} <= set(result["machine"])
    assert [(r["preset"], r["energy"]) for r in result["records"]] == [("tb", "gmm25"), ("mle", "gmm25")]
    for r in result["records"]:
        assert r["median_step_s"] > 0 and r["median_core_step_s"] > 0 and r["eval_s"] > 0 and r["peak_rss_mb"] > 0
        assert r["median_trainer_step_s"] > 0 and isinstance(r["lightning_overhead"], float)  # same algorithm: tb, mle
    bad = run_script("scripts/benchmark.py", "--presets", "nope", check=False)
    assert bad.returncode == 2 and "unknown preset nope" in bad.stderr

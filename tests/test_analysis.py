"""Looking at runs after the fact: `summarize.py` tables a sweep across seeds, `diff_runs.py` names what differs
between two runs, `reproduce.py` re-runs a run from its saved config and gets the same metrics, bit for bit on
CPU. The runs are real tiny runs trained in-process; the scripts run in-process through their `main` except where
the command line itself is under test."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY, compose_cfg
from omegaconf import OmegaConf

from sampler.analysis.diff import diff_runs
from sampler.analysis.reproduce import reproduce
from sampler.analysis.runs import group_runs, load_run
from sampler.app.cli import UsageError
from sampler.training.run import train

CURVES = ["trainer.log_every_n_steps=1"]  # a training row every step, so there are curves to plot
SEEDS = (0, 1, 2)
LOSSES = ("tb", "subtb")


def script(name: str):
    """The `main(argv) -> int` of `scripts/<name>.py`, imported in-process (Lightning is already loaded here)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def call(name: str, *argv: str, capsys) -> tuple[int, str, str]:
    """``(exit status, stdout, stderr)`` of a script's `main`, `UsageError` mapped as `sampler.app.cli.run` does."""
    try:
        status = script(name)([str(a) for a in argv])
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        status = 2
    out = capsys.readouterr()
    return status, out.out, out.err


def train_run(run_dir: Path, *overrides: str, hydra_overrides: list[str] | None = None) -> Path:
    """Train a tiny run into ``run_dir``; with ``hydra_overrides``, also leave the `.hydra/` files a Hydra job has."""
    cfg = compose_cfg(TINY + CURVES + list(overrides))
    cfg.paths.run_dir = str(run_dir)  # set directly: a sweep's directory names hold '=' and ','
    train(cfg)
    if hydra_overrides is not None:
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(hydra_overrides))
        choices = {"loss": next(o for o in hydra_overrides if o.startswith("loss=")).split("=")[1], "energy": "gmm25"}
        choices["hydra/launcher"] = "basic"
        (run_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    return run_dir


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, one_intra_op_thread) -> Path:
    """A sweep laid out as `scripts/train.py -m loss=tb,subtb seed=0,1,2 <TINY>` lays it out:
    `<sweep>/<overrides without the seed>/seed=N/`."""
    root = tmp_path_factory.mktemp("multiruns") / "2026-01-01_00-00-00-000000"
    for loss in LOSSES:
        for seed in SEEDS:
            overrides = [f"loss={loss}", f"seed={seed}", *TINY, *CURVES]
            subdir = ",".join(sorted(o for o in overrides if not o.startswith("seed=")))
            train_run(root / subdir / f"seed={seed}", f"loss={loss}", f"seed={seed}", hydra_overrides=overrides)
    return root


def run_of(sweep: Path, loss: str, seed: int) -> Path:
    (path,) = [p for p in sweep.glob(f"*/seed={seed}") if f"loss={loss}," in p.parent.name]
    return path


def final_metrics(sweep: Path, loss: str) -> list[dict]:
    return [json.loads((run_of(sweep, loss, s) / "metrics.json").read_text()) for s in SEEDS]


def flat(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


# --- summarize ---------------------------------------------------------------------------------------------------


def test_summary_has_one_row_per_configuration_with_mean_and_std_over_seeds(sweep, capsys):
    status, out, _ = call("summarize", sweep, "--format", "csv", capsys=capsys)
    assert status == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["configuration"] for r in rows] == ["loss=subtb", "loss=tb"]  # sorted, seed and common overrides out
    assert [r["n"] for r in rows] == ["3", "3"]
    for row, loss in zip(rows, ("subtb", "tb")):
        finals = final_metrics(sweep, loss)
        metrics = [k for k in finals[0] if k not in ("step", "eval_K")]
        assert {k[: -len("_mean")] for k in row if k.endswith("_mean")} == set(metrics)
        for key in metrics:
            values = [m[key] for m in finals]
            assert float(row[f"{key}_mean"]) == pytest.approx(sum(values) / 3, rel=1e-12, abs=1e-15)
            assert float(row[f"{key}_std"]) == pytest.approx(statistics.stdev(values), rel=1e-9, abs=1e-15)

    status, out, _ = call("summarize", sweep, "--metrics", "dlogZ,w2", "--decimals", "4", capsys=capsys)
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    assert lines[0] == "| configuration | n | dlogZ | w2 |"
    tb = [m["dlogZ"] for m in final_metrics(sweep, "tb")]
    expected = f"{statistics.mean(tb):.4f} ± {statistics.stdev(tb):.4f}"
    assert lines[2].startswith(f"| loss=tb | 3 | {expected} | ") and len(lines) == 3
    assert "6 runs in 2 configurations" in out and "common overrides: model.T=10" in out


def test_latex_table_has_a_row_per_configuration_and_escaped_names(sweep, capsys):
    status, out, _ = call("summarize", sweep, "--format", "latex", capsys=capsys)
    assert status == 0
    body = out.split("\\midrule\n")[1].split("\\bottomrule")[0].strip().splitlines()
    header = out.split("\\toprule\n")[1].splitlines()[0]
    assert len(body) == 2 and all(line.endswith(r" \\") for line in body)
    assert {line.count(" & ") for line in body} == {header.count(" & ")}
    assert r"log\_Z\_elbo" in header and r"\pm" in body[0] and body[1].startswith("loss=tb & 3 & $")
    assert out.count(r"\begin{tabular}") == 1 and out.rstrip().endswith(r"\end{tabular}")


def test_summary_counts_unfinished_runs_finds_nested_sweeps_and_leaves_out_reproductions(sweep, tmp_path, capsys):
    outer = tmp_path / "campaign"
    shutil.copytree(sweep, outer / "day1" / sweep.name)
    tb0 = run_of(outer / "day1" / sweep.name, "tb", 0)
    shutil.copytree(tb0, tb0.parent / "seed=0_repro_2026-01-02_00-00-00-000000")  # a reproduction, not a 4th seed
    killed = tb0.parent / "seed=3"
    shutil.copytree(tb0, killed)
    (killed / "metrics.json").unlink()
    cfg = OmegaConf.load(killed / "config_resolved.yaml")
    cfg.seed = 3
    OmegaConf.save(cfg, killed / "config_resolved.yaml")
    pending = tb0.parent / "seed=4" / ".hydra"
    pending.mkdir(parents=True)
    (pending / "config.yaml").write_text("seed: 4\n")  # a job that has not written its config yet

    status, out, _ = call("summarize", outer, "--format", "csv", capsys=capsys)
    assert status == 0
    rows = {r["configuration"]: r for r in csv.DictReader(io.StringIO(out))}
    assert (rows["loss=tb"]["n"], rows["loss=tb"]["unfinished"]) == ("3", "1")
    assert (rows["loss=subtb"]["n"], rows["loss=subtb"]["unfinished"]) == ("3", "0")
    tb = [m["w2"] for m in final_metrics(sweep, "tb")]
    assert float(rows["loss=tb"]["w2_mean"]) == pytest.approx(statistics.mean(tb), rel=1e-12)
    _, out, _ = call("summarize", outer, capsys=capsys)
    assert "7 runs in 2 configurations, 1 unfinished, 1 not started" in out and "1 reproduction left out" in out
    assert "| configuration | n | unfinished |" in out


def test_one_seed_shows_the_mean_alone(sweep, capsys):
    run = run_of(sweep, "tb", 1)
    status, out, _ = call("summarize", run, "--metrics", "dlogZ", capsys=capsys)
    dlogz = json.loads((run / "metrics.json").read_text())["dlogZ"]
    row = out.splitlines()[-1]  # one configuration: its label keeps every override but the seed
    assert status == 0 and row.startswith("| loss=tb model.T=10 ") and row.endswith(f" | 1 | {dlogz:.3f} |")


def test_without_hydra_overrides_the_label_is_the_config_difference(sweep, tmp_path):
    runs = []
    for loss in LOSSES:
        copy = shutil.copytree(run_of(sweep, loss, 0), tmp_path / loss)
        shutil.rmtree(copy / ".hydra")
        runs.append(load_run(copy))
    groups, pending = group_runs(runs)
    assert not pending
    assert [g.label for g in groups] == [
        "loss.name=subtb model.flow=conditional train.backward_loss=subtb train.lr_flow=0.01",
        "loss.name=tb model.flow=scalar train.backward_loss=tb train.lr_flow=0.1",
    ]


def test_curve_plot_is_a_png_and_an_unknown_metric_is_one_line(sweep, tmp_path, capsys):
    png = tmp_path / "plots" / "loss.png"
    status, _, err = call("summarize", sweep, "--plot", "loss", "--out", png, capsys=capsys)
    assert status == 0 and f"plot: {png}" in err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    status, _, err = call("summarize", sweep, "--plot", "nonsense", "--out", png, capsys=capsys)
    assert status == 2 and err.strip() == "error: no run logged nonsense in metrics.csv"
    status, _, err = call("summarize", sweep, "--metrics", "dlogz", capsys=capsys)
    assert status == 2 and err.startswith("error: no final metric dlogz; the runs have: log_Z_elbo, ")


# --- diff --------------------------------------------------------------------------------------------------------


def config_section(out: str) -> list[str]:
    """The keys listed under `config: N keys differ`."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("config:"))
    keys = []
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        keys.append(line.split()[0])
    return keys


def test_diff_of_tb_and_subtb_names_exactly_the_keys_the_loss_changes(sweep, tmp_path, capsys):
    composed = {
        loss: flat(OmegaConf.to_container(compose_cfg(TINY + CURVES + [f"loss={loss}"], tmp_path), resolve=True))
        for loss in LOSSES
    }
    tb, subtb = composed["tb"], composed["subtb"]
    expected = {k for k in tb.keys() | subtb.keys() if tb.get(k) != subtb.get(k) and not k.startswith("paths.")}
    assert "loss.name" in expected and "seed" not in expected
    # train.lr_flow composes to null for both (the objective's own flow lr) and the runs record the numbers
    assert tb["train.lr_flow"] is None and subtb["train.lr_flow"] is None
    expected.add("train.lr_flow")

    status, out, _ = call("diff_runs", run_of(sweep, "tb", 0), run_of(sweep, "subtb", 0), capsys=capsys)
    assert status == 1
    assert set(config_section(out)) == expected
    assert "  loss.name            tb → subtb" in out.splitlines()
    assert "  train.lr_flow        0.1 → 0.01" in out.splitlines()
    assert "hydra choices (A → B)" in out and "  loss  tb → subtb" in out.splitlines()
    a = json.loads((run_of(sweep, "tb", 0) / "metrics.json").read_text())
    b = json.loads((run_of(sweep, "subtb", 0) / "metrics.json").read_text())
    (row,) = [line.split() for line in out.splitlines() if line.split()[:1] == ["w2"]]
    assert [float(x) for x in row[1:]] == pytest.approx([a["w2"], b["w2"], b["w2"] - a["w2"]], rel=1e-5)


def test_diff_of_one_config_and_seed_in_two_directories_exits_0_and_another_seed_is_named(
    sweep, tmp_path, capsys, one_intra_op_thread
):
    original = run_of(sweep, "tb", 0)
    again = train_run(tmp_path / "again", "loss=tb", "seed=0")
    status, out, _ = call("diff_runs", original, again, capsys=capsys)
    assert status == 0, out
    assert "config: identical (paths.run_dir aside)" in out and "environment: identical" in out
    deltas = [line.split()[-1] for line in out.split("final metrics (metrics.json)\n")[1].splitlines()[1:]]
    assert deltas and set(deltas) == {"0"}  # CPU training is deterministic

    status, out, _ = call("diff_runs", original, run_of(sweep, "tb", 1), capsys=capsys)
    assert status == 1 and config_section(out) == ["seed"] and "  seed  0 → 1" in out.splitlines()


def test_diff_reports_environment_changes_of_the_manifest(sweep, tmp_path, capsys):
    a = run_of(sweep, "tb", 0)
    b = shutil.copytree(a, tmp_path / "other_machine")
    manifest = json.loads((b / "manifest.json").read_text())
    old_commit, old_torch = manifest["git_commit"], manifest["packages"]["torch"]
    manifest.update(git_commit="0123456789abcdef", git_dirty=not manifest["git_dirty"], git_diff_sha256="f" * 64)
    manifest["packages"]["torch"] = "2.99.0"
    (b / "manifest.json").write_text(json.dumps(manifest))

    d = diff_runs(load_run(a), load_run(b))
    assert d.configs_equal
    changed = {c.key: (c.old, c.new) for c in d.environment}
    assert changed["git_commit"] == (old_commit, "0123456789abcdef")
    assert changed["packages.torch"] == (old_torch, "2.99.0")
    assert set(changed) == {"git_commit", "git_dirty", "git_diff_sha256", "packages.torch"}
    status, out, _ = call("diff_runs", a, b, capsys=capsys)
    assert status == 0 and f"  packages.torch   {old_torch} → 2.99.0" in out.splitlines()


# --- reproduce ---------------------------------------------------------------------------------------------------


def test_reproducing_a_finished_cpu_run_gives_identical_metrics(sweep, tmp_path, capsys, one_intra_op_thread):
    run = run_of(sweep, "subtb", 2)
    status, out, _ = call("reproduce", run, "--out", tmp_path / "repro", capsys=capsys)
    assert status == 0, out
    original = json.loads((run / "metrics.json").read_text())
    assert json.loads((tmp_path / "repro" / "metrics.json").read_text()) == original
    assert out.splitlines()[-1] == f"all {len(original)} metrics identical"
    assert "comparison: exact" in out
    report = json.loads((tmp_path / "repro" / "reproduce.json").read_text())
    assert report["all_match"] and report["rtol"] == 0 and report["source"] == str(run)
    saved = OmegaConf.load(tmp_path / "repro" / "config_resolved.yaml")
    assert saved.paths.run_dir == str(tmp_path / "repro")
    status, out, _ = call("diff_runs", run, tmp_path / "repro", capsys=capsys)  # only where it was written differs
    assert status == 0 and "config: identical (paths.run_dir aside)" in out
    assert f"  paths.root  {OmegaConf.load(run / 'config_resolved.yaml').paths.root} → {tmp_path}" in out.splitlines()


def test_a_moved_run_whose_root_is_gone_reproduces(tmp_path, one_intra_op_thread):
    gone = tmp_path / "cluster_scratch"
    train(compose_cfg(TINY + [f"paths.root={gone}"], gone / "runs" / "r"))
    moved = shutil.move(gone / "runs" / "r", tmp_path / "archive")
    shutil.rmtree(gone)
    result = reproduce(moved, tmp_path / "repro")
    assert result.all_match and len(result.rows) == len(json.loads((Path(moved) / "metrics.json").read_text()))
    assert not gone.exists()


def test_a_reproduction_beside_a_run_never_continues_an_unfinished_twin(tmp_path, one_intra_op_thread):
    # `train` continues an unfinished run of the same config found beside a fresh directory under <root>/runs/;
    # a reproduction must start afresh instead.
    runs = tmp_path / "outputs" / "runs"
    train(compose_cfg(TINY + [f"paths.root={tmp_path / 'outputs'}"], runs / "done"))
    killed = shutil.copytree(runs / "done", runs / "killed")
    (killed / "metrics.json").unlink()
    result = reproduce(runs / "done")
    assert result.all_match and result.run_dir.parent == runs and result.run_dir.name.startswith("done_repro_")
    assert not (killed / "metrics.json").exists()


def test_a_tampered_metric_is_reported_as_a_mismatch(sweep, tmp_path, capsys, one_intra_op_thread):
    run = shutil.copytree(run_of(sweep, "tb", 2), tmp_path / "tampered")
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["dlogZ"] += 1e-12
    (run / "metrics.json").write_text(json.dumps(metrics))
    status, out, _ = call("reproduce", run, "--out", tmp_path / "repro", capsys=capsys)
    assert status == 1
    assert out.splitlines()[-1] == f"1 of {len(metrics)} metrics differ: dlogZ"
    (row,) = [line for line in out.splitlines() if line.startswith("dlogZ ")]
    assert row.endswith("NO")
    # a GPU-style tolerance forgives the same difference
    assert reproduce(run, tmp_path / "repro_tol", rtol=1e-9).all_match


def test_reproduce_refuses_an_unfinished_run_and_a_used_directory(sweep, tmp_path, capsys):
    run = shutil.copytree(run_of(sweep, "tb", 0), tmp_path / "unfinished")
    (run / "metrics.json").unlink()
    status, _, err = call("reproduce", run, capsys=capsys)
    assert status == 2 and err == f"error: {run} is unfinished (no metrics.json): there is nothing to compare with\n"
    status, _, err = call("reproduce", run_of(sweep, "tb", 0), "--out", run, capsys=capsys)
    assert status == 2 and "already exists and is not empty" in err


# --- the command line --------------------------------------------------------------------------------------------


def run_script(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_scripts_run_from_the_command_line(sweep, tmp_path):
    # summarize and diff_runs import no torch, so they answer at once; reproduce trains in a fresh process.
    t0 = time.perf_counter()
    proc = run_script("scripts/summarize.py", sweep)
    assert proc.returncode == 0 and "| loss=tb | 3 |" in proc.stdout, proc.stderr
    proc = run_script("scripts/diff_runs.py", run_of(sweep, "tb", 0), run_of(sweep, "tb", 1))
    assert proc.returncode == 1 and "  seed  0 → 1" in proc.stdout.splitlines(), proc.stderr
    assert time.perf_counter() - t0 < 20

    run = shutil.copytree(run_of(sweep, "tb", 1), tmp_path / "sweep" / "seed=1")
    proc = run_script("scripts/reproduce.py", run)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1].endswith("metrics identical")
    (repro,) = (tmp_path / "sweep").glob("seed=1_repro_*")  # the default: beside the run
    assert json.loads((repro / "reproduce.json").read_text())["all_match"]


@pytest.mark.parametrize("name", ["summarize", "diff_runs", "reproduce"])
def test_a_path_that_is_not_a_run_is_one_line_and_exit_status_2(name, sweep, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "file.txt").write_text("x")
    for bad in (tmp_path / "missing", empty, tmp_path / "file.txt"):
        args = [bad, run_of(sweep, "tb", 0)] if name == "diff_runs" else [bad]
        proc = run_script(f"scripts/{name}.py", *args)
        assert proc.returncode == 2, (bad, proc.stdout, proc.stderr)
        (line,) = proc.stderr.splitlines()
        assert line.startswith("error: not a run") and str(bad) in line, line
        assert proc.stdout == ""

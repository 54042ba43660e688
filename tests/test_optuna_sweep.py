"""Hyperparameter searches with the Optuna sweeper (`-m +search=tb_lr`): each trial returns a key of its run's
metrics.json, a failed trial is recorded as failed and the study goes on, and the study is kept in
<sweep dir>/optuna.db."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import TINY

from sampler.training.config_check import ConfigError
from sampler.training.search import (
    CheckSearch,
    TrialFailed,
    grid_sampler_stops_quietly,
    objective_of,
    run_trial,
    trial_value,
)

ROOT = Path(__file__).resolve().parents[1]


def test_the_objective_defaults_to_dlogz_rw_and_is_checked(tiny_cfg):
    assert objective_of(tiny_cfg()) == ("dlogZ_rw", "minimize")
    assert objective_of(tiny_cfg("+search.objective=ess", "+search.direction=maximize")) == ("ess", "maximize")
    with pytest.raises(ConfigError, match=r"^search.objective=dlogz is not a metric of metrics.json; choose one of: "):
        objective_of(tiny_cfg("+search.objective=dlogz"))
    with pytest.raises(ConfigError, match=r"^search.direction=down is not an option; choose one of: minimize, maxi"):
        objective_of(tiny_cfg("+search.direction=down"))


def test_a_missing_or_non_finite_objective_fails_the_trial():
    assert trial_value({"dlogZ_rw": 0.25, "step": 5.0}, "dlogZ_rw") == 0.25
    with pytest.raises(TrialFailed, match=r"^search.objective=dlogZ_rw is nan at step 5$"):
        trial_value({"dlogZ_rw": math.nan, "step": 5.0}, "dlogZ_rw")
    with pytest.raises(TrialFailed, match=r"^search.objective=w2 is inf at step 5$"):
        trial_value({"w2": math.inf, "step": 5.0}, "w2")
    with pytest.raises(TrialFailed, match=r"^search.objective=w2: this run's metrics.json has no w2 \(it has: ess, st"):
        trial_value({"ess": 0.5, "step": 5.0}, "w2")


def test_a_trial_returns_its_metrics_json_value(tiny_cfg, tmp_path, one_intra_op_thread, capsys):
    value = run_trial(tiny_cfg("+search.objective=ess", run_dir=tmp_path / "t"))
    assert value == json.loads((tmp_path / "t" / "metrics.json").read_text())["ess"]
    assert 0 < value <= 1


def test_a_trial_whose_values_the_checks_reject_fails_with_their_one_line(tiny_cfg, tmp_path, capsys):
    with pytest.raises(TrialFailed, match=r"^train.lr_flow must be"):
        run_trial(tiny_cfg("train.lr_flow=-1.0", run_dir=tmp_path / "bad"))
    assert capsys.readouterr().err.startswith("error: train.lr_flow must be")
    assert not (tmp_path / "bad").exists()


def test_a_grid_whose_last_trial_fails_ends_without_an_error():
    # The sweeper drives the study with ask/tell, as here; the grid sampler's stop request after the last grid point
    # raised when that last trial was a failed one (the sweeper catches it only for completed trials).
    def grid_study():
        study = optuna.create_study(sampler=optuna.samplers.GridSampler({"x": [0.0, 1.0]}))
        for state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL):
            trial = study.ask()
            trial.suggest_float("x", 0.0, 1.0)
            study.tell(trial, state=state, values=[1.0] if state == optuna.trial.TrialState.COMPLETE else None)
        return study

    original = optuna.samplers.GridSampler.after_trial
    try:
        if not getattr(original, "stops_quietly", False):
            with pytest.raises(RuntimeError, match="Study.stop"):
                grid_study()
        grid_sampler_stops_quietly()
        grid_sampler_stops_quietly()  # idempotent: wrapped once
        assert [t.state.name for t in grid_study().trials] == ["COMPLETE", "FAIL"]
    finally:
        optuna.samplers.GridSampler.after_trial = original


def test_a_misspelt_objective_stops_the_study_before_it_starts(tiny_cfg, capsys):
    with pytest.raises(SystemExit) as stop:
        CheckSearch().on_multirun_start(tiny_cfg("+search.objective=W2"))
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("error: search.objective=W2 is not a metric of metrics.json")


def study(tmp_path: Path, *args: str, timeout: float = 900) -> tuple[subprocess.CompletedProcess, Path]:
    """Run `scripts/train.py -m +search=tb_lr TINY... args` with its sweep in tmp_path; the sweep directory."""
    proc = subprocess.run(
        [sys.executable, "scripts/train.py", "-m", "+search=tb_lr", *TINY, *args, f"hydra.sweep.dir={tmp_path}/s"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, tmp_path / "s"


def trials_and_runs(sweep: Path) -> tuple[list, dict[int, float]]:
    """The study's trials (from optuna.db) and the dlogZ_rw of each trial's metrics.json by trial number."""
    trials = optuna.load_study(study_name="tb_lr", storage=f"sqlite:///{sweep}/optuna.db").trials
    runs = {
        int(path.parent.parent.name.removeprefix("trial=")): json.loads(path.read_text())["dlogZ_rw"]
        for path in sweep.glob("trial=*/seed=0/metrics.json")
    }
    return trials, runs


@pytest.mark.slow
def test_a_three_trial_study_on_the_local_launcher_minimises_metrics_json(tmp_path):
    _, sweep = study(tmp_path, "launcher=local", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=3")
    trials, runs = trials_and_runs(sweep)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    for key in ("train.lr_policy", "train.lr_flow", "exploration.start"):
        assert len({t.params[key] for t in trials}) == 3, key
    assert {t.number: t.value for t in trials} == runs  # each trial's value is its run's metrics.json value
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == min(runs.values())
    assert best["best_params"] == min(trials, key=lambda t: t.value).params


@pytest.mark.slow
def test_a_failed_trial_is_recorded_and_the_study_goes_on(tmp_path):
    # A grid (every searched key a choice) over three values of lr_flow, one of which the config checks reject.
    proc, sweep = study(
        tmp_path,
        "hydra/sweeper/sampler=grid",
        "train.lr_policy=choice(0.001)",
        "exploration.start=choice(0.1)",
        "loss=choice(tb)",
        "train.lr_flow=choice(-1.0,0.1,0.03)",
    )
    trials, runs = trials_and_runs(sweep)
    states = {t.params["train.lr_flow"]: t.state.name for t in trials}
    assert states == {-1.0: "FAIL", 0.1: "COMPLETE", 0.03: "COMPLETE"}
    assert len(runs) == 2
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == min(runs.values())
    assert "Failed experiment: train.lr_flow must be" in proc.stdout + proc.stderr

"""Hyperparameter searches: the value each trial of an Optuna study returns (``-m +search=NAME``, ``conf/search/``).

A trial is an ordinary run; the study (hydra-optuna-sweeper) optimises one key of its final metrics, ``metrics.json``:
``search.objective`` (default ``dlogZ_rw``) in the direction ``search.direction``. A trial that cannot give a finite
value (a non-finite loss or reward, a config error in the values it was given, a non-finite objective) raises
:class:`TrialFailed`; the sweeper records the trial as failed and the study goes on (``max_failure_rate: 1.0`` in the
search configs). SIGTERM or Ctrl-C stops the study, as it stops a run.
"""

from __future__ import annotations

import json
import math
import sys

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sampler.training.config_check import ConfigError
from sampler.training.metrics_csv import DISCRETE_EVAL_KEYS, EVAL_KEYS
from sampler.training.run import NUMERICAL_ERRORS, USER_ERRORS, TrainingInterrupted, train

#: The objective when ``search.objective`` is not set (what ``scripts/train.py`` returned before searches existed).
DEFAULT_OBJECTIVE = "dlogZ_rw"
#: Keys of ``metrics.json`` a study may optimise: the final evaluation's metrics.
OBJECTIVES = tuple(dict.fromkeys(k for k in EVAL_KEYS + DISCRETE_EVAL_KEYS if k not in ("eval_K", "eval_s"))) + (
    "n_energy_calls",
)
DIRECTIONS = ("minimize", "maximize")


class TrialFailed(RuntimeError):
    """A trial that gave no finite objective; the message is one line saying why."""


def objective_of(cfg: DictConfig) -> tuple[str, str]:
    """``(search.objective, search.direction)`` of ``cfg``, checked.

    Args:
        cfg: the composed config; without a ``search`` node, ``(DEFAULT_OBJECTIVE, "minimize")``.

    Returns:
        The metric's name and ``"minimize"`` or ``"maximize"``.

    Raises:
        ConfigError: an objective that is not a metric, or an unknown direction.
    """
    search = cfg.get("search") or {}
    key, direction = search.get("objective", DEFAULT_OBJECTIVE), search.get("direction", "minimize")
    if key not in OBJECTIVES:
        choices = ", ".join(OBJECTIVES)
        raise ConfigError(f"search.objective={key} is not a metric of metrics.json; choose one of: {choices}")
    if direction not in DIRECTIONS:
        raise ConfigError(f"search.direction={direction} is not an option; choose one of: {', '.join(DIRECTIONS)}")
    return str(key), str(direction)


def trial_value(metrics: dict, key: str) -> float:
    """The objective ``metrics[key]`` of a finished run.

    Args:
        metrics: the run's final metrics (``metrics.json``).
        key: ``search.objective``.

    Returns:
        The value, finite.

    Raises:
        TrialFailed: the metrics have no ``key`` (the energy has no exact sampler for ``w2``, no modes for
            ``mode_coverage``) or its value is NaN or infinite.
    """
    if metrics.get(key) is None:
        has = ", ".join(metrics)
        raise TrialFailed(f"search.objective={key}: this run's metrics.json has no {key} (it has: {has})")
    value = float(metrics[key])
    if not math.isfinite(value):
        raise TrialFailed(f"search.objective={key} is {value} at step {metrics.get('step', '?'):.0f}")
    return value


def run_trial(cfg: DictConfig) -> float:
    """Train the run of one trial and return its objective (see the module's docstring for failures).

    Args:
        cfg: the trial's composed config.

    Returns:
        ``metrics.json[search.objective]``.

    Raises:
        TrialFailed: the trial gave no finite objective (its one-line reason is also printed as ``error: ...``).
        SystemExit: SIGTERM or SIGINT stopped the run (status 128 + the signal's number); the study stops with it.
    """
    try:
        key, _ = objective_of(cfg)
        metrics, objects = train(cfg)
        value = trial_value(metrics, key)
    except TrainingInterrupted as stopped:
        print(f"error: {stopped}", file=sys.stderr)
        sys.exit(stopped.exit_status)
    except (*USER_ERRORS, *NUMERICAL_ERRORS, TrialFailed) as err:
        print(f"error: {err}", file=sys.stderr)
        raise TrialFailed(str(err)) from None
    print(f"run directory: {objects['run_dir']}")
    print(json.dumps(metrics, indent=2))
    return value


def under_optuna() -> bool:
    """Whether this process runs a trial of the Optuna sweeper (``hydra/sweeper=optuna``, as ``+search=`` sets)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    target = str(HydraConfig.get().sweeper.get("_target_", ""))
    return target.endswith("OptunaSweeper")


class CheckSearch(Callback):
    """Hydra callback of the search configs: ``search.objective`` and ``search.direction`` checked once, before the
    study starts, so that a misspelt metric is one line (exit status 2) rather than a study of failed trials."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        try:
            objective_of(config)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        grid_sampler_stops_quietly()


def grid_sampler_stops_quietly() -> None:
    """Let ``hydra/sweeper/sampler=grid`` finish its grid instead of failing after the last trial.

    Optuna's GridSampler ends a study by calling ``study.stop()`` once every grid point has been tried; that call is
    only allowed inside ``study.optimize``, and the Hydra sweeper drives the study with ask/tell instead, so the last
    trial's ``tell`` raised ``RuntimeError`` (exit status 1, no ``optimization_results.yaml``) although every trial had
    run. The sweeper already sets ``n_trials`` to the size of the grid, so the stop request is redundant: this wraps
    ``GridSampler.after_trial`` to drop exactly that error. Idempotent.
    """
    import optuna

    grid = optuna.samplers.GridSampler
    if getattr(grid.after_trial, "stops_quietly", False):
        return
    original = grid.after_trial

    def after_trial(self, study, trial, state, values):
        try:
            original(self, study, trial, state, values)
        except RuntimeError as err:
            if "Study.stop" not in str(err):
                raise

    after_trial.stops_quietly = True
    grid.after_trial = after_trial

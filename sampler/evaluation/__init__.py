"""Evaluation of samplers (docs/spec.md §8): metrics and figures."""

from sampler.evaluation.metrics import (
    effective_sample_size,
    energy_calls_paused,
    entropic_mode_coverage,
    evaluate,
    log_mean_exp,
    log_weights_f64,
    mmd_rbf,
    mode_coverage,
    mode_weight_tv,
    w2_floor,
    wasserstein2,
)
from sampler.evaluation.plots import plot_metric_curves, plot_samples

__all__ = [
    "effective_sample_size",
    "energy_calls_paused",
    "entropic_mode_coverage",
    "evaluate",
    "log_mean_exp",
    "log_weights_f64",
    "mmd_rbf",
    "mode_coverage",
    "mode_weight_tv",
    "plot_metric_curves",
    "plot_samples",
    "w2_floor",
    "wasserstein2",
]

"""Evaluation of samplers (SPEC §8): metrics and figures."""

from sampler.evaluation.metrics import (
    effective_sample_size,
    evaluate,
    log_mean_exp,
    mmd_rbf,
    mode_coverage,
    w2_floor,
    wasserstein2,
)
from sampler.evaluation.plots import plot_metric_curves, plot_samples

__all__ = [
    "effective_sample_size",
    "evaluate",
    "log_mean_exp",
    "mmd_rbf",
    "mode_coverage",
    "plot_metric_curves",
    "plot_samples",
    "w2_floor",
    "wasserstein2",
]

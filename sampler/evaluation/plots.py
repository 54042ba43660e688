"""Figures for a run: samples over the target density, and metric curves from ``metrics.csv``.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot), so they work headless, never
touch the global backend, and leave no open figures behind.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from sampler.energies.base import Energy, plot_limits
from sampler.evaluation.metrics import energy_calls_paused

log = logging.getLogger(__name__)

_GRID = 200  # points per axis of the density grid
_MAX_POINTS = 2000  # scatter at most this many samples per panel


def _density_grid(energy: Energy) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(X, Y, density normalised to max 1) on the plot window, or None if no 2-D marginal is available."""
    (x_lo, x_hi), (y_lo, y_hi) = plot_limits(energy)
    x_axis = torch.linspace(x_lo, x_hi, _GRID, device=energy.device)
    y_axis = torch.linspace(y_lo, y_hi, _GRID, device=energy.device)
    gx, gy = torch.meshgrid(x_axis, y_axis, indexing="xy")
    xy = torch.stack([gx.flatten(), gy.flatten()], dim=1)  # [G², 2]
    with torch.no_grad(), energy_calls_paused(energy):  # a figure is not part of the training budget
        logp = energy.marginal_log_density_2d(xy)
    if logp is None:
        return None
    logp = logp.detach().double().cpu()
    logp = torch.where(torch.isfinite(logp), logp, torch.full_like(logp, -math.inf))
    dens = torch.exp(logp - logp.max()).reshape(_GRID, _GRID)
    return gx.cpu().numpy(), gy.cpu().numpy(), torch.nan_to_num(dens, nan=0.0).numpy()


def _panel(ax: Axes, energy: Energy, grid, points: torch.Tensor, label: str, colour: str) -> None:
    (x_lo, x_hi), (y_lo, y_hi) = plot_limits(energy)
    if grid is not None:
        ax.contourf(*grid, levels=20, cmap="Blues")
    pts = points.detach().double().cpu()[:_MAX_POINTS, :2].numpy()
    ax.scatter(pts[:, 0], pts[:, 1], s=2, c=colour, alpha=0.6, linewidths=0)
    lo, hi = np.array([x_lo, y_lo]), np.array([x_hi, y_hi])
    outside = int(((pts < lo) | (pts > hi)).any(axis=1).sum())
    ax.set_title(label + (f" ({outside} of {len(pts)} outside window)" if outside else ""), fontsize=9)
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)
    if x_hi - x_lo == y_hi - y_lo:
        ax.set_aspect("equal")  # a square window: one unit is as long on both axes; else each axis fills its side
    ax.set_xlabel("$x_0$")
    ax.set_ylabel("$x_1$")


def plot_samples(
    energy: Energy, samples: torch.Tensor, path: str | Path, exact: torch.Tensor | None = None, title: str | None = None
) -> Path:
    """Scatter model samples over the target density in the (x0, x1) plane and save a PNG.

    The background is filled contours of ``exp(marginal_log_density_2d − max)`` on a 200×200 grid over
    ``energy.plot_range`` — ``(lo, hi)`` for both axes or ``((x_lo, x_hi), (y_lo, y_hi))`` — (the full density for
    2-D targets; omitted when the energy has no 2-D marginal). When ``exact`` is given a second panel shows exact
    samples on the same background for comparison. At most 2000 points are drawn per panel.

    Args:
        energy: the target (gives the window, the density and the name).
        samples: ``[N, d]`` model samples, d ≥ 2.
        path: output file; parent directories are created.
        exact: optional ``[M, d]`` exact samples.
        title: figure title; defaults to the energy's name and dimension.

    Returns:
        The path written.
    """
    if samples.ndim != 2 or samples.shape[1] < 2:
        raise ValueError(f"plot_samples needs samples of shape [N, d] with d >= 2 (got {tuple(samples.shape)})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = _density_grid(energy)
    n_panels = 1 if exact is None else 2
    fig = Figure(figsize=(4.5 * n_panels, 4.8))
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    where = "" if energy.dim == 2 else " — marginal of (x0, x1)"
    _panel(axes[0], energy, grid, samples, "model" + where, "tab:red")
    if exact is not None:
        _panel(axes[1], energy, grid, exact, "exact" + where, "tab:green")
    fig.suptitle(title or f"{energy.name} (d={energy.dim})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _read_columns(csv_path: Path) -> dict[str, list[str]]:
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    names = rows[0].keys() if rows else []
    return {k: [r.get(k) or "" for r in rows] for k in names}


def plot_metric_curves(
    metrics_csv_path: str | Path, path: str | Path, keys: Sequence[str] = ("dlogZ", "dlogZ_rw", "w2", "loss")
) -> Path:
    """Plot selected columns of a ``metrics.csv`` against ``step``, one small panel per key.

    Rows whose ``step`` or value cell is empty are skipped per key (loggers write sparse rows); keys absent from
    the header or without any value are left out, and a figure saying so is written if none remains.

    Args:
        metrics_csv_path: CSV with a header row that includes ``step``.
        path: output PNG; parent directories are created.
        keys: the columns to plot.

    Returns:
        The path written.
    """
    columns = _read_columns(Path(metrics_csv_path))
    if "step" not in columns and columns:
        raise ValueError(f"{metrics_csv_path} has no 'step' column (columns: {sorted(columns)})")
    series: dict[str, tuple[list[float], list[float]]] = {}
    for key in keys:
        if key not in columns:
            continue
        pairs = [(float(s), float(v)) for s, v in zip(columns["step"], columns[key]) if s.strip() and v.strip()]
        if pairs:
            series[key] = ([p[0] for p in pairs], [p[1] for p in pairs])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = max(len(series), 1)
    ncols = min(n, 2)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.5 * ncols, 3.0 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).flatten()
    if not series:
        log.warning("none of %s found in %s", list(keys), metrics_csv_path)
        axes[0].text(0.5, 0.5, "no data for " + ", ".join(keys), ha="center", va="center")
        axes[0].set_axis_off()
    for ax, (key, (steps, values)) in zip(axes, series.items()):
        ax.plot(steps, values, marker="." if len(steps) < 50 else None, lw=1)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes[len(series) :] if series else []:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path

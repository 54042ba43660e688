"""Figures of a discrete run: target / model / empirical heat maps of a 2-D grid, and modes found against trajectories
sampled. Built on :class:`matplotlib.figure.Figure` (no pyplot: headless, no global backend, no open figures) and
written atomically (a temporary file renamed into place).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from sampler.discrete.env import DiscreteEnv
from sampler.discrete.evaluation import ModeTracker, empirical_distribution, exact_terminal_distribution


def _on_grid(env: DiscreteEnv, probs: torch.Tensor) -> np.ndarray:
    """``[H, H]`` array (row = coordinate 1, column = coordinate 0) of ``probs`` over ``env.terminal_states()``."""
    grid = np.zeros((env.height, env.height))
    x = env.terminal_states().numpy()
    grid[x[:, 1], x[:, 0]] = probs.double().cpu().numpy()
    return grid


def plot_grid_distributions(env: DiscreteEnv, gfn, samples: torch.Tensor, path: str | Path) -> Path:
    """Target π, the model's exact distribution and the empirical distribution of ``samples`` side by side, on one
    colour scale (0 to max π), for an enumerated 2-D grid.

    Args:
        env: an enumerated grid target with ``ndim == 2``.
        gfn: the model (its exact distribution by dynamic programming).
        samples: ``[N, 2]`` terminal states sampled from the model.
        path: PNG to write; parent directories are created.

    Returns:
        The path written.

    Raises:
        ValueError: the target is not an enumerated 2-D grid.
    """
    if getattr(env, "ndim", None) != 2 or not env.exact or not hasattr(env, "height"):
        raise ValueError("plot_grid_distributions needs an enumerated 2-D grid target (ndim=2, exact=True)")
    pi = env.target_probs()
    panels = [
        ("target π", _on_grid(env, pi)),
        ("model (exact)", _on_grid(env, exact_terminal_distribution(gfn).cpu())),
        (f"empirical (N={samples.shape[0]:,})", _on_grid(env, empirical_distribution(env, samples))),
    ]
    vmax = float(pi.max())
    fig = Figure(figsize=(13.5, 4.4))
    axes = fig.subplots(1, 3)
    for ax, (title, grid) in zip(axes, panels):
        image = ax.imshow(grid, origin="lower", vmin=0.0, vmax=vmax, cmap="viridis", interpolation="nearest")
        ax.set_title(title)
        ax.set_xlabel("x0")
        ax.set_ylabel("x1")
    fig.colorbar(image, ax=list(axes), shrink=0.85)
    fig.suptitle(f"{env.name} {env.height}×{env.height}")
    return _save(fig, path)


def plot_modes_found(tracker: ModeTracker, path: str | Path) -> Path:
    """Modes found against trajectories sampled, from a :class:`ModeTracker`'s history.

    Args:
        tracker: the run's tracker.
        path: PNG to write; parent directories are created.

    Returns:
        The path written.
    """
    history = np.array(tracker.history or [(0, 0)], dtype=float)
    fig = Figure(figsize=(5.5, 4.0))
    ax = fig.subplots()
    ax.step(history[:, 0], history[:, 1], where="post")
    total = tracker.env.n_modes
    if total is not None:
        ax.axhline(total, color="grey", linestyle="--", linewidth=1, label=f"all modes ({total})")
        ax.legend(loc="lower right")
    ax.set_xlabel("trajectories sampled")
    ax.set_ylabel("modes found")
    ax.set_title(tracker.env.name)
    return _save(fig, path)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png", bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path

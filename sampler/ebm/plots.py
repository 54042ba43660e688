"""Pictures of a learned energy-based model (matplotlib, Agg backend; each file written atomically: a temporary
file in the same folder, renamed over the target, so no half-written PNG is ever left).

* :func:`plot_landscape` — 2-D data: the energy E_θ and the normalised density exp(−E_θ)/Z over the data box, with
  the data and (optionally) samples on top;
* :func:`plot_digit_grid` — image data: a grid of samples;
* :func:`plot_projection` — vectors of more than 2 dimensions: data and samples on dimensions (0, 1);
* :func:`plot_chains` — chains over time: 2-D paths over the energy, or rows of image snapshots.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from sampler.ebm.evaluation import energies, grid_cells  # noqa: E402

PLOT_GRID_N = 200  # cells per axis of the plotted landscape


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` atomically and close it; returns the path."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _landscape(net: nn.Module, bounds: tuple[float, float], n: int):
    xy, area = grid_cells(bounds, n)
    e = energies(net, xy)
    log_p = -e - torch.logsumexp(-e, 0) - torch.log(torch.tensor(area, dtype=torch.float64))
    return e.reshape(n, n).T.numpy(), log_p.exp().reshape(n, n).T.numpy()


def plot_landscape(
    net: nn.Module,
    data,
    path: str | Path,
    samples: torch.Tensor | None = None,
    n_points: int = 2000,
    title: str | None = None,
) -> Path:
    """The energy and the normalised density of a 2-D model over ``data.bounds``, with training points (and
    ``samples``).

    Args:
        net: the energy network.
        data: the 2-D data set.
        path: the PNG to write.
        samples: generated samples ``[K, 2]`` to overlay, or ``None``.
        n_points: how many data and sample points to draw.
        title: the figure's title (default: the data set's name).

    Returns:
        The path written.
    """
    lo, hi = data.bounds
    e, p = _landscape(net, data.bounds, PLOT_GRID_N)
    ext = (lo, hi, lo, hi)
    panels = 3 if samples is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4))
    axes[0].imshow(e, origin="lower", extent=ext, cmap="viridis")
    axes[0].set_title("energy E_θ")
    axes[1].imshow(p, origin="lower", extent=ext, cmap="magma")
    axes[1].set_title("density exp(−E_θ)/Z")
    d = data.train[:n_points].numpy()
    axes[0].scatter(d[:, 0], d[:, 1], s=1, c="w", alpha=0.3)
    if samples is not None:
        s = samples[:n_points].detach().cpu().numpy()
        axes[2].scatter(d[:, 0], d[:, 1], s=1, c="tab:blue", alpha=0.3, label="data")
        axes[2].scatter(s[:, 0], s[:, 1], s=1, c="tab:red", alpha=0.5, label="samples")
        axes[2].set_title("samples")
        axes[2].legend(loc="upper right", markerscale=6)
    for ax in axes:
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
    fig.suptitle(title or data.name)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_digit_grid(samples: torch.Tensor, path: str | Path, image_shape: Sequence[int] = (8, 8),
                    ncol: int = 10, title: str | None = None) -> Path:  # fmt: skip
    """A grid of image samples ``[K, H·W]`` in [-1, 1] (up to ``ncol`` per row).

    Returns:
        The path written.
    """
    x = samples.detach().cpu().float().clamp(-1, 1).reshape(-1, *image_shape)
    k = x.shape[0]
    nrow = max(1, -(-k // ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(ncol * 0.8, nrow * 0.8), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < k:
            ax.imshow(x[i].numpy(), cmap="gray_r", vmin=-1, vmax=1)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_projection(data, samples: torch.Tensor, path: str | Path, n_points: int = 2000,
                    title: str | None = None) -> Path:  # fmt: skip
    """Data and ``samples [K, d]`` projected on dimensions (0, 1), for vectors of more than 2 dimensions.

    Returns:
        The path written.
    """
    d = data.train[:n_points].numpy()
    s = samples[:n_points].detach().cpu().numpy()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(d[:, 0], d[:, 1], s=1, c="tab:blue", alpha=0.3, label="data")
    ax.scatter(s[:, 0], s[:, 1], s=1, c="tab:red", alpha=0.5, label="samples")
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]")
    ax.legend(loc="upper right", markerscale=6)
    ax.set_title(title or f"{data.name}: dimensions 0 and 1")
    return save_figure(fig, path)


def plot_chains(history: Sequence[torch.Tensor], path: str | Path, net: nn.Module | None = None, data=None,
                n_chains: int = 8, image_shape: Sequence[int] | None = None) -> Path:  # fmt: skip
    """Chains over time: ``history`` is a list of states ``[B, d]`` (as recorded by ``record_every``).

    For 2-D data the first ``n_chains`` paths are drawn over the energy of ``net`` on ``data.bounds``; for images
    each of ``n_chains`` rows shows one chain's snapshots left to right.

    Returns:
        The path written.
    """
    states = torch.stack([h.detach().cpu().float() for h in history])  # [S, B, d]
    n_chains = min(n_chains, states.shape[1])
    if image_shape is not None:
        s = states.shape[0]
        fig, axes = plt.subplots(n_chains, s, figsize=(s * 0.8, n_chains * 0.8), squeeze=False)
        for c in range(n_chains):
            for k in range(s):
                axes[c, k].axis("off")
                axes[c, k].imshow(states[k, c].clamp(-1, 1).reshape(*image_shape).numpy(), cmap="gray_r",
                                  vmin=-1, vmax=1)  # fmt: skip
        return save_figure(fig, path)
    fig, ax = plt.subplots(figsize=(5, 5))
    if net is not None and data is not None:
        lo, hi = data.bounds
        e, _ = _landscape(net, data.bounds, PLOT_GRID_N)
        ax.imshow(e, origin="lower", extent=(lo, hi, lo, hi), cmap="viridis")
    for c in range(n_chains):
        path_c = states[:, c].numpy()
        ax.plot(path_c[:, 0], path_c[:, 1], "-", lw=0.8, c="w")
        ax.plot(path_c[0, 0], path_c[0, 1], "o", ms=3, c="tab:orange")
        ax.plot(path_c[-1, 0], path_c[-1, 1], "*", ms=6, c="tab:red")
    ax.set_title("chains over time (o start, * end)")
    return save_figure(fig, path)

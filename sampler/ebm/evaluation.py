"""Evaluation of a learned energy-based model (what ``evaluate_ebm`` reports).

2-D data sets — the density p_θ = exp(−E_θ)/Z is normalised by quadrature: E_θ is evaluated at the centres of a
regular grid of ``GRID_N × GRID_N`` = 400 × 400 cells covering the data box ``[lo, hi]²`` (``data.bounds``:
[-4.5, 4.5]² for 8gaussians, [-3.5, 3.5]² for moons), and ``log Z = logsumexp(−E(cells)) + log(cell area)``
(the midpoint rule; mass outside the box is not counted, which the boxes make negligible):

* ``nll_test``: mean −log p_θ(x) over the test split (nats);
* ``nll_test_kde``: the same for scikit-learn's ``KernelDensity`` (Gaussian kernel) fitted on the train split, its
  bandwidth chosen by 3-fold cross-validated likelihood over 12 values log-spaced in [0.03, 1] × the data's std;
* ``kl_true``: KL(p_data ‖ p_θ) = Σ_cells p (log p − log p_θ) · area, where the true density is known
  (8gaussians);
* ``mmd``: the RBF-kernel MMD (median-heuristic bandwidths) between generated samples and the test split;
* ``energy_real``, ``energy_fake``, ``energy_gap``: mean E_θ over the test split, over the samples, and fake − real;
* ``n_energy_calls``: the energy evaluations training's negative sampler made.

Digits — ``mmd`` to the held-out digits, and a classifier score: a scikit-learn logistic regression trained on
the real training digits; ``classifier_confidence`` is its mean top-class probability on the generated samples,
``class_entropy`` the entropy (nats, at most log 10 ≈ 2.303) of the histogram of its predicted classes (images
without labels get ``mmd`` and ``n_energy_calls`` only).

Other dimensions (a user's vectors) — as for 2-D data, with log Z by :func:`ais_log_z` instead of the grid (so
``nll_test`` is an estimate over all of R^d) and no ``kl_true``.

:func:`ais_log_z` estimates log Z by annealed importance sampling, which needs no grid and works in any dimension.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from sampler.ebm.nets import EBMEnergy, sampling_mode

GRID_N = 400  # cells per axis of the quadrature grid
KDE_BANDWIDTHS = 12  # candidate bandwidths of the KDE baseline
KDE_FOLDS = 3
TOY_KEYS = ("nll_test", "nll_test_kde", "kl_true", "mmd", "energy_real", "energy_fake", "energy_gap", "n_energy_calls")
IMAGE_KEYS = ("mmd", "classifier_confidence", "class_entropy", "n_energy_calls")


def grid_cells(bounds: tuple[float, float], n: int = GRID_N) -> tuple[torch.Tensor, float]:
    """Centres of the ``n × n`` cells of the square ``[lo, hi]²`` ``[n², 2]`` and the area of one cell."""
    lo, hi = float(bounds[0]), float(bounds[1])
    h = (hi - lo) / n
    c = lo + h * (torch.arange(n, dtype=torch.float64) + 0.5)
    xy = torch.stack(torch.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)
    return xy, h * h


@torch.no_grad()
def energies(net: nn.Module, x: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """E_θ(x) ``[N]`` (float64) in eval mode, in chunks."""
    device = next(net.parameters()).device
    with sampling_mode(net):
        out = [net(x[i : i + chunk].to(device).float()).double().cpu() for i in range(0, len(x), chunk)]
    return torch.cat(out)


def log_z_quadrature(net: nn.Module, bounds: tuple[float, float], n: int = GRID_N) -> float:
    """log ∫ exp(−E_θ) over ``[lo, hi]²`` by the midpoint rule on ``n × n`` cells.

    Args:
        net: a 2-D energy network.
        bounds: the box.
        n: cells per axis.

    Returns:
        log Z.
    """
    xy, area = grid_cells(bounds, n)
    return float(torch.logsumexp(-energies(net, xy), 0)) + math.log(area)


def nll_quadrature(net: nn.Module, x: torch.Tensor, bounds: tuple[float, float], n: int = GRID_N) -> float:
    """Mean −log p_θ(x) over ``x [M, 2]`` with Z by :func:`log_z_quadrature` (nats)."""
    return float(energies(net, x).mean()) + log_z_quadrature(net, bounds, n)


def kl_quadrature(log_density, net: nn.Module, bounds: tuple[float, float], n: int = GRID_N) -> float:
    """KL(p ‖ p_θ) = ∫ p (log p − log p_θ) on the grid, for a normalised true ``log_density(x [N, 2]) -> [N]``."""
    xy, area = grid_cells(bounds, n)
    log_q = -energies(net, xy)
    log_q = log_q - (torch.logsumexp(log_q, 0) + math.log(area))
    log_p = log_density(xy).double()
    p = log_p.exp()
    return float((p * (log_p - log_q)).sum() * area)


def kde_nll(train: torch.Tensor, test: torch.Tensor, seed: int = 0) -> tuple[float, float]:
    """The KDE baseline: mean −log p̂(test) of a Gaussian ``KernelDensity`` fitted on ``train``, its bandwidth
    chosen by cross-validated likelihood (see the module docstring).

    Returns:
        ``(nll, bandwidth)``.
    """
    from sklearn.model_selection import GridSearchCV, KFold  # noqa: PLC0415 - scikit-learn only for the baseline
    from sklearn.neighbors import KernelDensity  # noqa: PLC0415

    x = train.double().numpy()
    scale = float(x.std(0).mean())
    grid = {"bandwidth": scale * np.logspace(math.log10(0.03), 0, KDE_BANDWIDTHS)}
    folds = KFold(KDE_FOLDS, shuffle=True, random_state=seed)
    search = GridSearchCV(KernelDensity(kernel="gaussian"), grid, cv=folds).fit(x)
    best = search.best_estimator_
    return float(-best.score_samples(test.double().numpy()).mean()), float(best.bandwidth)


@torch.no_grad()
def ais_log_z(
    net: nn.Module,
    dim: int,
    n_particles: int = 1000,
    n_temps: int = 200,
    base_std: float = 2.0,
    step_size: float = 0.05,
    n_mcmc: int = 2,
    generator: torch.Generator | None = None,
) -> float:
    """log Z = log ∫ exp(−E_θ) by annealed importance sampling (Neal 2001, https://arxiv.org/abs/physics/9803008).

    Particles from the base N(0, base_std²·I) follow the geometric path π_β ∝ N(0, s²)^{1−β} · exp(−E)^β over
    ``n_temps`` values of β (uniform in [0, 1] on a sigmoid-stretched grid), each transition ``n_mcmc`` MALA steps
    with step size ``step_size``; log Z is the log-mean of the accumulated importance weights.

    Args:
        net: the energy network (any dimension).
        dim: d.
        n_particles, n_temps, base_std, step_size, n_mcmc: the sampler.
        generator: the source of the noise.

    Returns:
        The estimate of log Z over all of R^d (not only a box).
    """
    energy = EBMEnergy(net, dim=dim)
    device = energy.device
    s2 = base_std**2
    log_base_norm = -0.5 * dim * math.log(2 * math.pi * s2)

    def log_base(x: torch.Tensor) -> torch.Tensor:
        return -x.pow(2).sum(1) / (2 * s2) + log_base_norm

    # β grid denser at both ends, where the intermediate densities change fastest
    u = torch.linspace(-6, 6, n_temps, dtype=torch.float64)
    betas = (torch.sigmoid(u) - torch.sigmoid(u[0])) / (torch.sigmoid(u[-1]) - torch.sigmoid(u[0]))
    gdev = generator.device if generator is not None else torch.device("cpu")  # the noise is drawn where it lives
    x = base_std * torch.randn(n_particles, dim, generator=generator, device=gdev).to(device)
    lr, g = energy.log_reward_and_grad(x)
    log_w = torch.zeros(n_particles, dtype=torch.float64, device=device)
    for k in range(1, n_temps):
        b0, b1 = float(betas[k - 1]), float(betas[k])
        log_w += (b1 - b0) * (lr.double() - log_base(x).double())

        def target(z, lrz, gz, b=b1):
            return (1 - b) * log_base(z) + b * lrz, -(1 - b) * z / s2 + b * gz

        lp, grad = target(x, lr, g)
        for _ in range(n_mcmc):
            noise = torch.randn(x.shape, generator=generator, device=gdev).to(device)
            prop = x + step_size * grad + math.sqrt(2 * step_size) * noise
            lr_p, g_p = energy.log_reward_and_grad(prop)
            lp_p, grad_p = target(prop, lr_p, g_p)
            fwd = -noise.pow(2).sum(1) / 2
            bwd = -(x - prop - step_size * grad_p).pow(2).sum(1) / (4 * step_size)
            log_alpha = lp_p - lp + bwd - fwd
            accept = torch.log(torch.rand(n_particles, generator=generator, device=gdev).to(device)) < log_alpha
            a = accept[:, None]
            x, lr, g = torch.where(a, prop, x), torch.where(accept, lr_p, lr), torch.where(a, g_p, g)
            lp, grad = torch.where(accept, lp_p, lp), torch.where(a, grad_p, grad)
    return float(torch.logsumexp(log_w, 0) - math.log(n_particles))


def digit_classifier(data, seed: int = 0):
    """A scikit-learn logistic regression trained on the real training digits (``data.train``,
    ``data.train_labels``); its test accuracy is about 0.96."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

    return LogisticRegression(max_iter=2000, random_state=seed).fit(data.train.numpy(), data.train_labels.numpy())


def classifier_score(classifier, samples: torch.Tensor, n_classes: int = 10) -> tuple[float, float]:
    """``(mean top-class probability, entropy of the predicted-class histogram in nats)`` of ``samples``."""
    proba = classifier.predict_proba(samples.detach().cpu().double().numpy())
    confidence = float(proba.max(1).mean())
    counts = np.bincount(proba.argmax(1), minlength=n_classes).astype(np.float64)
    p = counts / counts.sum()
    entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    return confidence, entropy


def evaluate_ebm(
    net: nn.Module,
    data,
    samples: torch.Tensor,
    n_energy_calls: int | float = 0,
    *,
    classifier=None,
    kde: float | None = None,
    grid_n: int = GRID_N,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """The metrics of a learned EBM (see the module docstring for each key).

    Args:
        net: the energy network.
        data: the data set (:class:`~sampler.ebm.data.EBMData`): ``train``, ``test``, ``bounds``, ``image_shape``,
            ``log_density`` (and for digits ``train_labels``).
        samples: generated samples ``[K, d]`` (e.g. from :func:`sampler.ebm.generate.generate`).
        n_energy_calls: the energy evaluations training's sampler made.
        classifier: for images, a fitted classifier (default: :func:`digit_classifier` on ``data`` when it has
            ``train_labels``).
        kde: a cached ``nll_test_kde`` of the same split (computing it takes seconds).
        grid_n: cells per axis of the quadrature grid.
        seed: the seed of the KDE's folds and the classifier.
        generator: the noise of the AIS estimate of log Z (data of more than 2 dimensions that are not images).

    Returns:
        Flat floats: ``nll_test nll_test_kde [kl_true] mmd energy_real energy_fake energy_gap n_energy_calls`` for
        vectors (``kl_true`` only for 2-D data whose ``log_density`` is known), ``mmd classifier_confidence
        class_entropy n_energy_calls`` for images.

    Raises:
        ValueError: samples of another width than the data.
    """
    from sampler.evaluation.metrics import mmd_rbf  # noqa: PLC0415 - imports POT

    if samples.dim() != 2 or samples.shape[1] != data.dim:
        raise ValueError(f"samples must be [K, {data.dim}] (got {tuple(samples.shape)})")
    samples = samples.detach().cpu().float()
    if getattr(data, "image_shape", None) is not None:
        out = {"mmd": mmd_rbf(samples, data.test)}
        if classifier is None and getattr(data, "train_labels", None) is not None:
            classifier = digit_classifier(data, seed)
        if classifier is not None:
            out["classifier_confidence"], out["class_entropy"] = classifier_score(classifier, samples)
        out["n_energy_calls"] = float(n_energy_calls)
        return out
    e_real = float(energies(net, data.test).mean())
    e_fake = float(energies(net, samples).mean())
    if data.dim == 2:
        nll = nll_quadrature(net, data.test, data.bounds, grid_n)
    else:
        nll = e_real + ais_log_z(net, data.dim, generator=generator)
    out = {"nll_test": nll, "nll_test_kde": kde if kde is not None else kde_nll(data.train, data.test, seed)[0]}
    if data.dim == 2 and getattr(data, "log_density", None) is not None:
        out["kl_true"] = kl_quadrature(data.log_density, net, data.bounds, grid_n)
    out.update({"mmd": mmd_rbf(samples, data.test), "energy_real": e_real, "energy_fake": e_fake,
                "energy_gap": e_fake - e_real, "n_energy_calls": float(n_energy_calls)})  # fmt: skip
    return out

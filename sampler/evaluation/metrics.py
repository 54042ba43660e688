"""Evaluation of a trained sampler against its target (docs/spec.md §8): log Z bounds, ESS, and sample metrics.

``evaluate`` is the one entry point the training loop calls; the other functions are the individual statistics,
each a pure function of tensors so that scripts and tests can use them on their own.

With ``log w = log r(x) + Σ log P_B − Σ log P_F`` over K forward trajectories (no exploration):

* ``log_Z_elbo = mean(log w)``  — a lower bound on log Z in expectation (the paper's log Ẑ);
* ``log_Z_rw = logmeanexp(log w)``  — the importance-weighted estimate (log Ẑ^RW);
* ``eubo = mean(log w)`` over backward trajectories from exact samples — an upper bound in expectation;
* ``elbo_eubo_gap = eubo − log_Z_elbo`` — upper minus lower bound: mode collapse cannot hide in it;
* ``ess = (Σw)² / (K Σw²)`` in (0, 1].

Log-weights and their means are summed in float64 (a float32 sum over T = 100 steps is off by ~4e-4 nats at
d = 32).

Sample metrics compare the K terminal states with K exact samples: ``w2`` (exact optimal transport), ``w2_floor``
(the same statistic between two exact sets — the value a perfect sampler gets) and ``mmd``; for targets with mode
centres, ``mode_coverage``, ``mode_weight_tv`` and ``entropic_mode_coverage``. ``n_energy_calls`` is the number of
log-reward evaluations training has made so far; evaluation itself is not counted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np
import ot
import torch

from sampler.energies.base import Energy, counting_energy_calls
from sampler.gfn.trajectories import Trajectories

log = logging.getLogger(__name__)

#: ``(energy.name, energy.dim, K, seed) -> W2`` between two exact sample sets; see :func:`w2_floor`.
_W2_FLOOR_CACHE: dict[tuple[str, int, int, int], float] = {}

#: Iteration cap of the network simplex; 2000 × 2000 problems need far more than POT's default of 1e5.
_EMD_MAX_ITER = 10_000_000


def log_mean_exp(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log(mean(exp(x))) along ``dim``, computed stably.

    Args:
        x: any tensor with a non-empty ``dim``.
        dim: the dimension to reduce.

    Returns:
        ``x`` with ``dim`` reduced.
    """
    return torch.logsumexp(x, dim=dim) - math.log(x.shape[dim])


@contextmanager
def energy_calls_paused(energy: Energy) -> Iterator[None]:
    """Do not count ``energy``'s log-reward evaluations inside the block (evaluation is not part of the training
    budget ``n_energy_calls``); a no-op for targets that are not :class:`~sampler.energies.base.Energy` subclasses.

    Args:
        energy: the target.
    """
    with counting_energy_calls(energy, on=False):
        yield


def log_weights_f64(traj: Trajectories) -> torch.Tensor:
    """Per-trajectory log-weight ``log r(x) + Σ log P_B − Σ log P_F``, with the sums taken in float64.

    Unlike :meth:`Trajectories.log_weight` (sums in the trajectories' dtype) this does not lose ~1e-4 nats to float32
    rounding over T = 100 steps of large log-densities.

    Args:
        traj: complete trajectories; padded steps (``mask`` False) are left out.

    Returns:
        ``[B]`` float64 log-weights (detached).
    """
    log_pf = traj.log_pf.detach().double()
    log_pb = traj.log_pb.detach().double()
    if traj.mask is not None:
        log_pf = log_pf.masked_fill(~traj.mask, 0.0)
        log_pb = log_pb.masked_fill(~traj.mask, 0.0)
    return traj.log_reward.detach().double() + log_pb.sum(1) - log_pf.sum(1)


def effective_sample_size(log_w: torch.Tensor) -> float:
    """Normalised effective sample size (Σw)² / (K·Σw²) of importance weights given in log space.

    Computed as ``exp(2·logsumexp(log w) − logsumexp(2·log w) − log K)`` in float64, so arbitrarily large or
    small weights do not overflow. 1 for equal weights, 1/K when one weight dominates.

    Args:
        log_w: ``[K]`` log importance weights (unnormalised; a common shift does not matter).

    Returns:
        ESS as a fraction of K, in [1/K, 1]; 0.0 if every weight is zero, NaN if any log-weight is NaN.
    """
    lw = log_w.detach().double().flatten()
    if torch.isnan(lw).any():
        return float("nan")
    lse = torch.logsumexp(lw, 0)
    if torch.isneginf(lse):
        return 0.0
    return float(torch.exp(2 * lse - torch.logsumexp(2 * lw, 0) - math.log(lw.numel())))


def wasserstein2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Exact 2-Wasserstein distance between two empirical distributions with uniform weights.

    ``sqrt(ot.emd2(uniform, uniform, C))`` with ``C_ij = ‖x_i − y_j‖²``, in float64. This is W2, not W2²
    (docs/spec.md §8: the paper's column is labelled W2² but its code takes the square root).

    Args:
        x: ``[N, d]`` samples.
        y: ``[M, d]`` samples.

    Returns:
        W2 (same units as x). A warning is logged if the network simplex did not reach optimality.
    """
    xs = x.detach().cpu().double().numpy()
    ys = y.detach().cpu().double().numpy()
    a = np.full(xs.shape[0], 1.0 / xs.shape[0])
    b = np.full(ys.shape[0], 1.0 / ys.shape[0])
    cost = ot.dist(xs, ys, metric="sqeuclidean")
    w2_sq, info = ot.emd2(a, b, cost, numItermax=_EMD_MAX_ITER, log=True)
    if info.get("result_code", 1) != 1 or info.get("warning"):
        log.warning("ot.emd2 did not converge (result_code=%s): %s", info.get("result_code"), info.get("warning"))
    return math.sqrt(max(float(w2_sq), 0.0))


def mmd_rbf(
    x: torch.Tensor, y: torch.Tensor, bandwidth_factors: Sequence[float] = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0)
) -> float:
    """Maximum mean discrepancy with a family of RBF kernels scaled by the median heuristic.

    With pooled samples z = (x, y) and ``h = median{‖z_i − z_j‖ : i < j}`` (the median heuristic, so the
    bandwidths follow the scale and dimension of the data), the kernels are
    ``k_f(a, b) = exp(−‖a − b‖² / (2 (f·h)²))`` for each factor f in ``bandwidth_factors``. For each kernel the
    biased (V-statistic) estimate ``MMD²_f = mean k(x,x') + mean k(y,y') − 2 mean k(x,y)`` is taken (diagonals
    included, so it is ≥ 0 up to rounding); the result is ``sqrt(max(mean_f MMD²_f, 0))``.

    Args:
        x: ``[N, d]`` samples.
        y: ``[M, d]`` samples.
        bandwidth_factors: multipliers of the median pairwise distance h.

    Returns:
        The averaged-kernel MMD (0 for identical sets).
    """
    xs = x.detach().cpu().double()
    ys = y.detach().cpu().double()
    d_xx = torch.cdist(xs, xs).pow_(2)
    d_yy = torch.cdist(ys, ys).pow_(2)
    d_xy = torch.cdist(xs, ys).pow_(2)
    # h from the same squared distances (the pairs i < j of the pooled sample; the lower median, as torch's):
    # the square root is monotone, so this is the median distance without a second, pdist pass
    iu_x = torch.triu_indices(len(xs), len(xs), offset=1)
    iu_y = torch.triu_indices(len(ys), len(ys), offset=1)
    pooled = torch.cat([d_xx[iu_x[0], iu_x[1]], d_yy[iu_y[0], iu_y[1]], d_xy.reshape(-1)])
    h = math.sqrt(max(float(pooled.median()), 0.0))
    del pooled
    if not h > 0:  # all points identical (or NaN): any bandwidth gives the same answer
        h = 1.0
    # exponents clamped at −700 (e^−700 ≈ 1e−304, nothing next to a kernel mean ≥ 1/N): torch's CPU exp is ~4×
    # slower on arguments that underflow, and at small bandwidths most pairs do. One scratch buffer per matrix
    # shape: a fresh 32 MB tensor per operation costs more in page faults than the arithmetic.
    buffers = {}
    mmd2 = 0.0
    for f in bandwidth_factors:
        gamma = 1.0 / (2.0 * (f * h) ** 2)
        k = []
        for dd in (d_xx, d_yy, d_xy):
            buf = buffers.setdefault(dd.shape, torch.empty_like(dd))
            k.append(torch.mul(dd, -gamma, out=buf).clamp_(min=-700.0).exp_().mean())
        mmd2 += float(k[0] + k[1] - 2 * k[2])
    return math.sqrt(max(mmd2 / len(bandwidth_factors), 0.0))


def mode_coverage(x: torch.Tensor, centres: torch.Tensor, std: float) -> float:
    """Fraction of mixture modes that own at least one sample within 3 standard deviations.

    Each sample is assigned to its nearest centre; mode m is covered if some sample assigned to it lies within
    Euclidean distance ``3·std·sqrt(d)`` of its centre (the length of a 3-std offset in every coordinate, so the
    criterion does not tighten with dimension; in 2-D it keeps > 99.9 % of an isotropic mode's mass).

    Args:
        x: ``[N, d]`` samples.
        centres: ``[M, d]`` mode centres.
        std: per-dimension standard deviation of each (isotropic) mode.

    Returns:
        Covered fraction in [0, 1].
    """
    xs = x.detach().cpu().double()
    cs = centres.detach().cpu().double()
    dist = torch.cdist(xs, cs)  # [N, M]
    nearest_dist, owner = dist.min(dim=1)  # [N]
    close = nearest_dist <= 3.0 * std * math.sqrt(xs.shape[1])
    covered = torch.zeros(cs.shape[0], dtype=torch.bool)
    covered[owner[close]] = True
    return float(covered.double().mean())


def mode_weight_tv(x: torch.Tensor, centres: torch.Tensor, std: float, weights: torch.Tensor) -> float:
    """Total variation between the sampled and the true proportions of mixture modes.

    Each sample is assigned to its nearest centre if it lies within the coverage radius ``3·std·sqrt(d)`` of it (the
    radius of :func:`mode_coverage`), otherwise to an extra "between modes" bin whose true proportion is 0. With p̂
    the fraction of samples per bin and p = (``weights``, 0), the result is ``½ Σ_{M+1 bins} |p̂ − p|``: 0 when the
    sampler puts exactly the true mass on every mode, 1 when all its samples are between modes.

    Args:
        x: ``[N, d]`` samples (N ≥ 1).
        centres: ``[M, d]`` mode centres.
        std: per-dimension standard deviation of each (isotropic) mode.
        weights: ``[M]`` true mode weights (summing to 1).

    Returns:
        TV in [0, 1].
    """
    xs = x.detach().cpu().double()
    cs = centres.detach().cpu().double()
    p = weights.detach().cpu().double().flatten()
    if p.shape[0] != cs.shape[0]:
        raise ValueError(f"mode_weights has {p.shape[0]} entries but there are {cs.shape[0]} mode centres")
    nearest_dist, owner = torch.cdist(xs, cs).min(dim=1)  # [N]
    between = nearest_dist > 3.0 * std * math.sqrt(xs.shape[1])
    bins = owner.masked_fill(between, cs.shape[0])  # index M: between modes
    p_hat = torch.bincount(bins, minlength=cs.shape[0] + 1).double() / xs.shape[0]  # [M + 1]
    return 0.5 * float((p_hat - torch.cat([p, p.new_zeros(1)])).abs().sum())


def entropic_mode_coverage(x: torch.Tensor, centres: torch.Tensor) -> float:
    """Entropic mode coverage of Blessing et al. 2024, "Beyond ELBOs" (https://arxiv.org/abs/2406.07423).

    ``EMC = −Σ_m p̂_m log p̂_m / log M``, the entropy of the sampled mode proportions in base M, where p̂_m is the
    fraction of samples whose most likely mixture component is m (0·log 0 = 0). For the isotropic, equal-variance
    modes here the most likely component is the nearest centre; as in the benchmark's code every sample is assigned
    (no coverage radius). 1 when the samples are spread equally over all M modes, 0 when they sit in one mode; an
    unequal-weight target scores below 1 even when sampled exactly. With M = 1 the formula is 0/0; the result is then
    1.0 (the only mode holds every sample).

    Args:
        x: ``[N, d]`` samples (N ≥ 1).
        centres: ``[M, d]`` mode centres.

    Returns:
        EMC in [0, 1].
    """
    xs = x.detach().cpu().double()
    cs = centres.detach().cpu().double()
    n_modes = cs.shape[0]
    if n_modes == 1:
        return 1.0
    owner = torch.cdist(xs, cs).argmin(dim=1)  # [N]
    p_hat = torch.bincount(owner, minlength=n_modes).double() / xs.shape[0]  # [M]
    p_hat = p_hat[p_hat > 0]
    return float(-(p_hat * p_hat.log()).sum() / math.log(n_modes))


def w2_floor(energy: Energy, K: int, seed: int) -> float:
    """W2 between two independent sets of K exact samples: the W2 a perfect sampler would score.

    Drawn with a generator seeded from ``seed`` on the energy's device, and cached per process in a module-level
    dict keyed by ``(energy.name, energy.dim, K, seed)``, so periodic evaluations pay for it once.

    Args:
        energy: a target with an exact sampler (``energy.has_sampler``).
        K: size of each sample set.
        seed: seed of the generator.

    Returns:
        W2 between the two sets.
    """
    key = (energy.name, int(energy.dim), int(K), int(seed))
    if key not in _W2_FLOOR_CACHE:
        if not energy.has_sampler:
            raise ValueError(f"w2_floor needs exact samples but {energy.name} has no sampler")
        g = torch.Generator(device=energy.device).manual_seed(int(seed))
        a = energy.sample(K, generator=g)
        b = energy.sample(K, generator=g)
        _W2_FLOOR_CACHE[key] = wasserstein2(a, b)
    return _W2_FLOOR_CACHE[key]


def evaluate(
    gfn: Any, energy: Energy, K: int = 2000, generator: torch.Generator | None = None, seed: int = 0
) -> tuple[dict[str, float], torch.Tensor]:
    """All metrics of docs/spec.md §8 for one sampler, from K forward trajectories without exploration.

    Keys (flat, python floats): ``log_Z_elbo log_Z_rw ess eval_K`` always; ``log_Z_learned`` when the
    trajectories carry a learned log Z (its mean if per-trajectory); ``dlogZ dlogZ_rw`` when ``energy.log_Z`` is
    known; ``eubo elbo_eubo_gap w2 w2_floor mmd`` when the energy has an exact sampler; ``mode_coverage
    mode_weight_tv`` when it has mode centres and ``mode_std`` (equal mode weights unless it states
    ``mode_weights``); ``entropic_mode_coverage`` when it has mode centres; ``n_energy_calls`` (the
    energy's training-time count, read, not changed: evaluation runs with counting paused) when the energy is an
    :class:`~sampler.energies.base.Energy`. The caller adds ``step``.

    Args:
        gfn: a sampler with ``rollout_forward(n, exploration_std=None, generator=...)`` and
            ``rollout_backward(x, generator=...)``, both returning :class:`~sampler.gfn.trajectories.Trajectories`.
        energy: the target.
        K: number of trajectories and of exact samples (≥ 2).
        generator: source of all sampling noise; by default a fresh one on the energy's device seeded with ``seed``.
        seed: seed of the default generator and of the cached :func:`w2_floor`.

    Returns:
        ``(metrics, samples)`` with ``samples`` the model's terminal states ``[K, d]`` (detached, on the CPU).
    """
    if K < 2:
        raise ValueError(f"evaluate needs K >= 2 trajectories (got K={K})")
    if generator is None:
        generator = torch.Generator(device=energy.device).manual_seed(int(seed))
    metrics: dict[str, float] = {}
    with torch.no_grad(), energy_calls_paused(energy):
        traj = gfn.rollout_forward(K, exploration_std=None, generator=generator)
        samples = traj.terminal_states.detach()
        log_w = log_weights_f64(traj)  # [K]
        if not torch.isfinite(log_w).all():
            log.warning("%d of %d forward log-weights are not finite", int((~torch.isfinite(log_w)).sum()), K)
        metrics["log_Z_elbo"] = float(log_w.mean())
        metrics["log_Z_rw"] = float(log_mean_exp(log_w))
        if traj.log_Z is not None:
            metrics["log_Z_learned"] = float(traj.log_Z.detach().double().mean())
        if energy.log_Z is not None:
            metrics["dlogZ"] = abs(energy.log_Z - metrics["log_Z_elbo"])
            metrics["dlogZ_rw"] = abs(energy.log_Z - metrics["log_Z_rw"])
        metrics["ess"] = effective_sample_size(log_w)

        if energy.has_sampler:
            exact = energy.sample(K, generator=generator)
            # POT's network simplex releases the GIL: the exact transport runs beside the backward rollout.
            # (torch gives up one of its threads meanwhile, so the two do not fight over the cores.)
            threads = torch.get_num_threads()
            with ThreadPoolExecutor(max_workers=1) as pool:
                w2 = pool.submit(lambda: (wasserstein2(samples, exact), w2_floor(energy, K, seed)))
                torch.set_num_threads(max(1, threads - 1))
                try:
                    back = gfn.rollout_backward(exact, generator=generator)
                    metrics["eubo"] = float(log_weights_f64(back).mean())
                    metrics["elbo_eubo_gap"] = metrics["eubo"] - metrics["log_Z_elbo"]
                    metrics["mmd"] = mmd_rbf(samples, exact)
                finally:
                    torch.set_num_threads(threads)
                metrics["w2"], metrics["w2_floor"] = w2.result()
        centres = energy.mode_centres
        if centres is not None and energy.mode_std is not None:
            weights = getattr(energy, "mode_weights", None)
            if weights is None:
                weights = torch.full((centres.shape[0],), 1.0 / centres.shape[0], dtype=torch.float64)
            metrics["mode_coverage"] = mode_coverage(samples, centres, energy.mode_std)
            metrics["mode_weight_tv"] = mode_weight_tv(samples, centres, energy.mode_std, weights)
        if centres is not None:
            metrics["entropic_mode_coverage"] = entropic_mode_coverage(samples, centres)
    if isinstance(energy, Energy):
        metrics["n_energy_calls"] = float(energy.n_energy_calls)
    metrics["eval_K"] = float(K)
    return metrics, samples.cpu()

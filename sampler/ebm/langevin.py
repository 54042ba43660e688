"""The Langevin chain that draws an energy-based model's negatives and its samples, batched over all chains.

One step of every chain at once (Du & Mordatch 2019, https://arxiv.org/abs/1903.08689)::

    x ← x − η · clip(∇E(x)) / T + σ · ξ,    ξ ~ N(0, I)

with step size η, noise scale σ and temperature T. Without clipping the chain is unadjusted Langevin dynamics for
exp(−E/τ) with τ = T·σ²/(2η): σ = √(2η) samples the model itself (τ = 1); the smaller noise of the EBM guide
(η = 0.01, σ = 0.005, τ ≈ 0.001) makes the chain close to gradient descent on E, which is what short-run PCD
trains with. ``acceptance`` is the mean Metropolis–Hastings acceptance probability of the chain's proposals for its
own stationary law exp(−E/τ) — 1 for a step size that discretises the dynamics well — and with ``metropolis=True``
proposals are accepted or rejected by it (MALA), which makes the chain exact for exp(−E/τ).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class ChainStats:
    """Diagnostics of one chain run (floats): mean step norm ‖x_{k+1} − x_k‖, mean ‖∇E‖ before clipping, the share
    of clipped gradients, the mean acceptance probability, and the energy evaluations made (points)."""

    step_norm: float
    grad_norm: float
    clipped: float
    acceptance: float
    n_energy_calls: int


def check_chain_settings(n_steps: int, step_size: float, noise_scale: float, grad_clip: float | None) -> None:
    """Raise one ValueError line for chain settings that cannot run.

    Args:
        n_steps: must be ≥ 1.
        step_size: η, must be > 0.
        noise_scale: σ, must be ≥ 0.
        grad_clip: per-chain gradient-norm clip, ``None`` or > 0.
    """
    if int(n_steps) != n_steps or int(n_steps) < 1:
        raise ValueError(f"n_steps must be an integer ≥ 1 (got {n_steps})")
    if not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be > 0 (got {step_size})")
    if not (math.isfinite(noise_scale) and noise_scale >= 0):
        raise ValueError(f"noise_scale must be ≥ 0 (got {noise_scale})")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip must be > 0 or null (got {grad_clip})")


def _clip(grad: torch.Tensor, max_norm: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clipped gradient, per-chain norm before clipping [B], clipped mask [B])."""
    norm = grad.flatten(1).norm(dim=1)
    if max_norm is None:
        return grad, norm, torch.zeros_like(norm, dtype=torch.bool)
    scale = (max_norm / norm.clamp_min(1e-12)).clamp(max=1.0)
    return grad * scale.view(-1, *([1] * (grad.dim() - 1))), norm, norm > max_norm


def langevin(
    energy,
    x: torch.Tensor,
    n_steps: int,
    step_size: float,
    noise_scale: float,
    generator: torch.Generator | None = None,
    *,
    grad_clip: float | None = None,
    temperature: float | Sequence[float] = 1.0,
    clamp: tuple[float, float] | None = None,
    metropolis: bool = False,
    record_every: int | None = None,
) -> tuple[torch.Tensor, ChainStats, list[torch.Tensor]]:
    """Run ``n_steps`` Langevin steps of all chains ``x [B, d]`` on ``energy`` (an :class:`~sampler.energies.Energy`
    whose ``log_reward = −E``, such as :class:`~sampler.ebm.nets.EBMEnergy`).

    Args:
        energy: the target; ``log_reward_and_grad`` is called once per step on the whole batch.
        x: starting points ``[B, d]`` (not modified).
        n_steps, step_size, noise_scale: the chain's length, η and σ (see the module docstring).
        generator: the source of the noise (and of the Metropolis decisions).
        grad_clip: clip each chain's gradient to this norm, or ``None``.
        temperature: T, one value, or one per step (``len == n_steps``: an annealing schedule).
        clamp: keep the states in this box (image data in [-1, 1]), or ``None``.
        metropolis: accept/reject each proposal (MALA; the stationary law is exactly exp(−E/τ)).
        record_every: keep a copy of the states every this many steps (and the first and last), for plots.

    Returns:
        ``(final states [B, d], ChainStats, recorded states)``; states are detached.
    """
    check_chain_settings(n_steps, step_size, noise_scale, grad_clip)
    temps = list(temperature) if isinstance(temperature, Sequence) else [float(temperature)] * int(n_steps)
    if len(temps) != n_steps or min(temps) <= 0:
        raise ValueError(f"temperature must be > 0, one value or one per step ({n_steps}) (got {len(temps)})")
    x = x.detach().clone()
    history = [x.clone()] if record_every else []
    lr, grad = energy.log_reward_and_grad(x)  # log r = −E, ∇ log r = −∇E
    calls = x.shape[0]
    # sums over steps, kept as tensors (no device synchronisation inside the loop)
    step_norm, grad_norm, clipped, accept = (torch.zeros((), device=x.device) for _ in range(4))
    for k in range(int(n_steps)):
        t = float(temps[k])
        tau = t * noise_scale**2 / (2 * step_size) if noise_scale > 0 else None
        g, norm, was_clipped = _clip(grad, grad_clip)
        drift = step_size * g / t  # −η ∇E / T
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        prop = x + drift + noise_scale * noise
        if clamp is not None:
            prop = prop.clamp(clamp[0], clamp[1])
        lr_p, grad_p = energy.log_reward_and_grad(prop)
        calls += x.shape[0]
        if tau is not None:
            # log α = [log π(x') + log q(x|x')] − [log π(x) + log q(x'|x)], π ∝ exp(−E/τ), q = N(· + drift, σ²)
            g_p, _, _ = _clip(grad_p, grad_clip)
            back = x - prop - step_size * g_p / t
            log_q_back = -back.flatten(1).pow(2).sum(1) / (2 * noise_scale**2)
            log_q_fwd = -noise.flatten(1).pow(2).sum(1) / 2
            log_alpha = (lr_p - lr) / tau + log_q_back - log_q_fwd
            log_alpha = torch.nan_to_num(log_alpha, nan=-math.inf).clamp(max=0.0)
            alpha = log_alpha.exp()
        else:
            alpha = torch.ones(x.shape[0], device=x.device)
        if metropolis and tau is not None:
            u = torch.rand(x.shape[0], generator=generator, device=x.device)
            keep = (u < alpha).view(-1, *([1] * (x.dim() - 1)))
            new = torch.where(keep, prop, x)
            lr = torch.where(keep.view(-1), lr_p, lr)
            grad = torch.where(keep, grad_p, grad)
        else:
            new, lr, grad = prop, lr_p, grad_p
        step_norm += (new - x).flatten(1).norm(dim=1).mean()
        grad_norm += norm.mean()
        clipped += was_clipped.float().mean()
        accept += alpha.mean()
        x = new
        if record_every and ((k + 1) % record_every == 0 or k + 1 == n_steps):
            history.append(x.clone())
    n = float(n_steps)
    stats = ChainStats(float(step_norm) / n, float(grad_norm) / n, float(clipped) / n, float(accept) / n, calls)
    return x, stats, history

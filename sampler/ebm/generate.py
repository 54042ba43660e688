"""Generating from a learned energy by Langevin MCMC: from noise, from the PCD chain buffer, or annealed.

All three run :func:`sampler.ebm.langevin.langevin` on the :class:`~sampler.ebm.nets.EBMEnergy` of the network, with
every chain batched. Annealing lowers the temperature geometrically from ``t_start`` (10) to 1 over the chain, so
the early steps cross between modes on a flattened landscape and the last ones settle into exp(−E).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sampler.ebm.langevin import ChainStats, langevin
from sampler.ebm.learning import NOISE_SCALE, STEP_SIZE, ChainBuffer
from sampler.ebm.nets import EBMEnergy

METHODS = ("noise", "buffer", "annealed")


def temperature_schedule(n_steps: int, t_start: float = 10.0, t_end: float = 1.0) -> list[float]:
    """``n_steps`` temperatures falling geometrically from ``t_start`` to ``t_end`` (both included).

    Raises:
        ValueError: ``n_steps < 1`` or a temperature ≤ 0.
    """
    if int(n_steps) < 1 or not (t_start > 0 and t_end > 0):
        raise ValueError(f"need n_steps ≥ 1 and temperatures > 0 (got {n_steps}, {t_start} → {t_end})")
    if n_steps == 1:
        return [float(t_end)]
    r = math.log(t_end / t_start) / (n_steps - 1)
    return [float(t_start * math.exp(r * k)) for k in range(n_steps)]


def generate(
    net: nn.Module,
    n: int,
    method: str = "noise",
    *,
    bounds: tuple[float, float] = (-1.0, 1.0),
    n_steps: int = 200,
    step_size: float = STEP_SIZE,
    noise_scale: float = NOISE_SCALE,
    grad_clip: float | None = None,
    clamp: tuple[float, float] | None = None,
    buffer: ChainBuffer | None = None,
    t_start: float = 10.0,
    metropolis: bool = False,
    record_every: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, ChainStats, list[torch.Tensor]]:
    """``n`` samples of the model exp(−E_θ) by Langevin MCMC.

    Args:
        net: the energy network.
        n: number of samples (chains).
        method: ``noise`` (start uniform on the box ``bounds``), ``buffer`` (start at ``n`` chains of the PCD
            buffer, without changing it) or ``annealed`` (from noise, temperature ``t_start`` → 1).
        bounds: the data box.
        n_steps, step_size, noise_scale, grad_clip, clamp, metropolis: the chain (see
            :func:`sampler.ebm.langevin.langevin`).
        buffer: the chain buffer, for ``method="buffer"``.
        t_start: the first temperature of ``annealed``.
        record_every: keep the states every this many steps (chains over time).
        generator: the source of the noise.

    Returns:
        ``(samples [n, d], ChainStats, recorded states)``; ``buffer`` gives at most ``buffer.capacity`` samples.

    Raises:
        ValueError: an unknown method, or ``buffer`` without a filled buffer.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)} (got {method!r})")
    dim = int(getattr(net, "dim", 0)) or (buffer.dim if buffer is not None else 0)
    energy = EBMEnergy(net, dim=dim, bounds=bounds)
    lo, hi = bounds
    device = generator.device if generator is not None else energy.device  # (the generator must be the energy's)
    if method == "buffer":
        if buffer is None or not buffer.filled:
            raise ValueError("method=buffer needs the (filled) PCD chain buffer of a trained model")
        idx = torch.randperm(buffer.capacity, generator=generator, device=device)[: min(n, buffer.capacity)]
        x0 = buffer.states[idx.to(buffer.states.device)]
    else:
        x0 = lo + (hi - lo) * torch.rand(n, dim, generator=generator, device=device)
    x0 = x0.to(energy.device)
    temps = temperature_schedule(n_steps, t_start, 1.0) if method == "annealed" else 1.0
    return langevin(
        energy, x0, n_steps, step_size, noise_scale, generator,
        grad_clip=grad_clip, temperature=temps, clamp=clamp, metropolis=metropolis, record_every=record_every,
    )  # fmt: skip

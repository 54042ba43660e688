"""Objectives (config group ``loss``): pure functions ``Trajectories -> [B]`` plus what each one needs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from sampler.gfn.trajectories import Trajectories
from sampler.losses.balance import detailed_balance, subtrajectory_balance, trajectory_balance, vargrad
from sampler.losses.divergence import maximum_likelihood, pis_kl

__all__ = [
    "LOSSES",
    "ALIASES",
    "LossSpec",
    "get_loss",
    "flow_lr",
    "trajectory_balance",
    "vargrad",
    "detailed_balance",
    "subtrajectory_balance",
    "pis_kl",
    "maximum_likelihood",
]


@dataclass(frozen=True)
class LossSpec:
    """An objective and its requirements.

    Attributes:
        fn: ``(traj, **kw) -> [B]``.
        flows: the ``model.flow`` values it works with.
        forward: usable on forward (sampled) trajectories.
        backward: usable on backward trajectories from target/buffer samples.
        reparam: needs gradients through the sampled states.
        lr_flow: the learning rate of log Z or the state flow it is trained with when ``train.lr_flow`` is null
            (Sendera et al. 2024: 1e-1 for a scalar log Z, 1e-2 for the state flows of DB and SubTB).
    """

    fn: Callable[..., torch.Tensor]
    flows: tuple[str, ...]
    forward: bool = True
    backward: bool = True
    reparam: bool = False
    lr_flow: float = 1e-1


LOSSES: dict[str, LossSpec] = {
    "tb": LossSpec(trajectory_balance, ("scalar", "conditional", "forward_looking")),
    "vargrad": LossSpec(vargrad, ("scalar", "conditional", "forward_looking")),
    "db": LossSpec(detailed_balance, ("conditional", "forward_looking"), lr_flow=1e-2),
    "subtb": LossSpec(subtrajectory_balance, ("conditional", "forward_looking"), lr_flow=1e-2),
    "fl_subtb": LossSpec(subtrajectory_balance, ("forward_looking",), lr_flow=1e-2),
    "pis": LossSpec(pis_kl, ("scalar", "conditional", "forward_looking"), backward=False, reparam=True),
    "mle": LossSpec(maximum_likelihood, ("scalar", "conditional", "forward_looking"), forward=False),
}
ALIASES = {"tb_avg": "vargrad"}


def flow_lr(name: str, configured: float | None = None) -> float:
    """The flow learning rate: ``configured`` (``train.lr_flow``) when given, else the objective ``name``'s."""
    if configured is not None:
        return float(configured)
    return LOSSES[ALIASES.get(name, name)].lr_flow


def get_loss(name: str, lam: float = 2.0) -> Callable[[Trajectories], torch.Tensor]:
    """The per-trajectory loss function called ``name`` (λ applies to the sub-trajectory objectives)."""
    name = ALIASES.get(name, name)
    if name not in LOSSES:
        raise ValueError(f"loss.name must be one of {', '.join(list(LOSSES) + list(ALIASES))} (got {name})")
    fn = LOSSES[name].fn
    return partial(fn, lam=lam) if fn is subtrajectory_balance else fn

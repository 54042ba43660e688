"""Discrete GFlowNets: targets on integer DAGs (hypergrid, deceptive grid, your own reward), the masked-policy
sampler, exact evaluation by dynamic programming, back-and-forth local search and GAFN.

Plain PyTorch: the objects here plug into the same losses (:mod:`sampler.losses`) and the same training recipe as the
diffusion sampler. docs/discrete.md has a walk-through.
"""

from sampler.discrete.env import MAX_STATES, DiscreteEnv, GridEnv
from sampler.discrete.evaluation import (
    ModeTracker,
    empirical_distribution,
    evaluate_discrete,
    exact_terminal_distribution,
    jensen_shannon,
    kl_divergence,
)
from sampler.discrete.gafn import GAFN, RND
from sampler.discrete.gfn import DiscreteGFN, SampleLog, trajectory_balance_loss
from sampler.discrete.local_search import BackAndForthSearch, back_and_forth
from sampler.discrete.targets import DeceptiveGrid, HyperGrid

#: Discrete targets by config name.
DISCRETE_ENERGIES = {"hypergrid": HyperGrid, "deceptive_grid": DeceptiveGrid}

__all__ = [
    "DISCRETE_ENERGIES",
    "GAFN",
    "MAX_STATES",
    "RND",
    "BackAndForthSearch",
    "DeceptiveGrid",
    "DiscreteEnv",
    "DiscreteGFN",
    "GridEnv",
    "HyperGrid",
    "ModeTracker",
    "SampleLog",
    "back_and_forth",
    "empirical_distribution",
    "evaluate_discrete",
    "exact_terminal_distribution",
    "jensen_shannon",
    "kl_divergence",
    "trajectory_balance_loss",
]

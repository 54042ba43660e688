"""Continuous target densities (docs/spec.md §1) and the registry ``ENERGIES`` that configs name them by."""

from sampler.energies.base import Energy, NonFiniteRewardError, check_finite
from sampler.energies.funnel import EasyFunnel, Funnel, HardFunnel
from sampler.energies.gaussian import DiagonalGaussian
from sampler.energies.gmm import GMM9, GMM25, GMM40, GaussianMixture
from sampler.energies.manywell import ManyWell

ENERGIES: dict[str, type[Energy]] = {
    "gmm9": GMM9,
    "gmm25": GMM25,
    "gmm40": GMM40,
    "funnel": Funnel,
    "hard_funnel": Funnel,
    "easy_funnel": EasyFunnel,
    "manywell": ManyWell,
    "gaussian": DiagonalGaussian,
}

__all__ = [
    "DiagonalGaussian",
    "ENERGIES",
    "GMM9",
    "GMM25",
    "GMM40",
    "EasyFunnel",
    "Energy",
    "Funnel",
    "GaussianMixture",
    "HardFunnel",
    "ManyWell",
    "NonFiniteRewardError",
    "check_finite",
]

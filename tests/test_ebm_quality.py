"""Quality of PCD-trained energy-based models on 2-D data (slow: minutes per case on one CPU thread).

Protocol: the default split (5000 train / 2000 test points), a 3×128 SiLU MLP, Adam at 2e-3 with cosine decay,
batches of 256, Langevin negatives of 20 steps with η = 0.01 and matched noise σ = √(2η) from a buffer of 8192
chains (restart probability 0.05), α = 0.01. The test NLL is exact (quadrature, 400 × 400 cells); the baseline is
scikit-learn's KernelDensity with a cross-validated bandwidth on the same split.
"""

from __future__ import annotations

import math
import time

import pytest
import torch

from sampler.ebm import ChainBuffer, EBMRecipe, LangevinNegatives, MLPEnergy, generate, toy_data
from sampler.ebm.data import GAUSS8_STD, gauss8_centres
from sampler.ebm.evaluation import evaluate_ebm

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_intra_op_thread")]

STEPS = 3000
STEP_SIZE = 0.01
NOISE = math.sqrt(2 * STEP_SIZE)


def train_pcd(name: str, seed: int, steps: int = STEPS) -> tuple[dict[str, float], torch.Tensor, float]:
    """Train PCD on ``name`` and evaluate it: ``(metrics, samples, seconds per step)``."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    data = toy_data(name, seed=seed)
    net = MLPEnergy(2, hidden=(128, 128, 128))
    chains = ChainBuffer(8192, 2, 0.05, data.bounds)
    recipe = EBMRecipe(net, LangevinNegatives(20, STEP_SIZE, NOISE, chains), data.train, bounds=data.bounds)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    start = time.perf_counter()
    for step in range(steps):
        recipe.step(step, opt, generator=gen)
        sched.step()
    per_step = (time.perf_counter() - start) / steps
    samples, _, _ = generate(net, 2000, "buffer", buffer=chains, bounds=data.bounds, n_steps=200,
                             step_size=STEP_SIZE, noise_scale=NOISE, generator=gen)  # fmt: skip
    return evaluate_ebm(net, data, samples, recipe.n_energy_calls, seed=seed), samples, per_step


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", ["moons", "8gaussians"])
def test_pcd_is_as_likely_as_the_kde_baseline_and_covers_every_mode(name, seed):
    metrics, samples, per_step = train_pcd(name, seed)
    print(name, seed, f"{per_step * 1e3:.1f} ms/step", {k: round(v, 4) for k, v in metrics.items()})
    assert metrics["nll_test"] <= metrics["nll_test_kde"], metrics
    if name == "8gaussians":
        near = torch.cdist(samples.double(), gauss8_centres()).min(1)
        share = torch.bincount(near.indices[near.values < 3 * GAUSS8_STD], minlength=8).double() / len(samples)
        assert (share > 0.25 / 8).all(), share.tolist()  # every mode holds at least a quarter of its 1/8

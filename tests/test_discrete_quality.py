"""Quality of the discrete GFlowNet: the 16×16 hypergrid of the "GFlowNet in PyTorch" example (R0 = 1e-2), trajectory
balance with batch 16, reaches an exact (dynamic-programming) L1 below 0.05 within 2000 iterations on every seed.

Protocol: 2×256 ReLU MLP, uniform P_B, Adam (lr 2e-3 for the policy, 0.1 for log Z), both learning rates decaying
linearly to 5 % at iteration 2000. With the constant lr 1e-3 the L1 stalls at 0.06–0.13 after 2000 iterations: at
batch 16 the gradient noise, not the number of steps, sets the floor, and the decay lowers it.
"""

from __future__ import annotations

import logging
import statistics
import time

import pytest
import torch

from sampler.discrete import DiscreteGFN, HyperGrid, exact_terminal_distribution
from sampler.losses import trajectory_balance

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_intra_op_thread")]
log = logging.getLogger(__name__)

ITERATIONS, BATCH = 2000, 16


def train_hypergrid(seed: int) -> tuple[float, float]:
    """(exact L1 after training, seconds per iteration) of one seed."""
    torch.manual_seed(seed)
    env = HyperGrid(ndim=2, height=16, R0=1e-2)
    gfn = DiscreteGFN(env)
    groups = [{"params": gfn.policy_parameters(), "lr": 2e-3}, {"params": gfn.flow_parameters(), "lr": 0.1}]
    opt = torch.optim.Adam(groups)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - 0.95 * min(i, ITERATIONS) / ITERATIONS)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(ITERATIONS):
        loss = trajectory_balance(gfn.rollout_forward(BATCH, generator=generator)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    seconds = (time.perf_counter() - start) / ITERATIONS
    l1 = float((exact_terminal_distribution(gfn) - env.target_probs()).abs().sum())
    return l1, seconds


def test_hypergrid_16x16_tb_batch_16_reaches_exact_l1_below_0_05_on_three_seeds():
    results = [train_hypergrid(seed) for seed in (0, 1, 2)]
    l1 = [r[0] for r in results]
    log.warning(
        "hypergrid 16x16 TB batch 16, %d iterations: exact L1 %s (mean %.4f ± %.4f), %.1f ms/iteration",
        ITERATIONS, [round(v, 4) for v in l1], statistics.mean(l1), statistics.stdev(l1),
        1e3 * statistics.mean(r[1] for r in results),
    )  # fmt: skip
    assert max(l1) < 0.05, l1

"""Shared fixtures: compose the real config tree (as `scripts/train.py` does) into a temporary run directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import sampler.training  # noqa: F401  (registers the config resolvers)
from sampler.losses import subtrajectory_balance, trajectory_balance

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")

#: Small sizes that keep a run to about a second: what the smoke tests need, not what a user trains with.
TINY = [
    "model.T=10",
    "model.hidden_dim=16",
    "train.batch_size=16",
    "trainer.max_steps=5",
    "eval.every=5",
    "eval.K=64",
    "eval.plots=false",
    "checkpoint.every=5",
    "trainer.enable_progress_bar=false",
]


def compose_cfg(overrides: list[str], run_dir: Path | None = None) -> DictConfig:
    """The composed root config with ``overrides`` (and ``paths.run_dir=run_dir``)."""
    extra = [f"paths.run_dir={run_dir}"] if run_dir is not None else []
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides) + extra)


@pytest.fixture(scope="module")
def one_intra_op_thread():
    """For modules of tiny tensors: a second intra-op thread only adds synchronisation, which on a busy 2-core
    machine makes them several times slower. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_cfg(tmp_path):
    def make(*overrides: str, run_dir: Path | None = None) -> DictConfig:
        return compose_cfg(TINY + list(overrides), run_dir or tmp_path / "run")

    return make


def weighted_rollout_loss(gfn, direction: str, x: torch.Tensor, seed: int):
    """A rollout (explored forward, or backward from ``x``) and a loss that reaches every log-density and the
    objective: Σ_b w_b·(Σ log P_F + Σ log P_B) with uneven weights w, plus TB (or SubTB when there are flows)."""
    n = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    if direction == "forward":
        traj = gfn.rollout_forward(n, exploration_std=0.2, generator=gen)
    else:
        traj = gfn.rollout_backward(x, generator=gen)
    weights = torch.linspace(-1, 2, n)
    loss = (traj.log_pf.sum(1) * weights).sum() + (traj.log_pb.sum(1) * weights).sum()
    objective = subtrajectory_balance(traj) if traj.log_flow is not None else trajectory_balance(traj)
    return traj, loss + objective.sum()

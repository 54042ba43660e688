"""Parallel MALA local search (docs/spec.md §6): stationarity, step-size adaptation, reproducibility, checkpoints."""

import io
import math

import pytest
import torch

from sampler.energies.base import Energy
from sampler.energies.gaussian import DiagonalGaussian
from sampler.local_search import MALA


@pytest.fixture
def gaussian_1d():
    return DiagonalGaussian(dim=1, mean=1.5, std=0.7)


class HalfLineGaussian(Energy):
    """N(0, 1) restricted to x > 0: log r = −∞ on the other half-line, where every proposal must be rejected."""

    dim = 1

    def log_reward(self, x):
        return torch.where(x[:, 0] > 0, -0.5 * x[:, 0].pow(2), -math.inf)

    def log_reward_and_grad(self, x):
        return self.log_reward(x), -x


def test_chains_and_returned_samples_match_a_1d_gaussian(gaussian_1d):
    g = torch.Generator().manual_seed(0)
    mala = MALA(n_steps=200, burn_in=100, step_size=0.1)
    x0 = torch.randn(8192, 1, generator=g)  # N(0, 1): off target, burn-in must move it
    xs, log_r = mala.run(x0, gaussian_1d, generator=g)
    # The MH chains themselves are exact for the target.
    assert mala.last_state.mean().item() == pytest.approx(1.5, abs=0.03)
    assert mala.last_state.var().item() == pytest.approx(0.49, rel=0.06)
    # The returned accepted proposals follow r(x)·a(x), a(x) = acceptance probability of leaving x (docs/spec.md keeps
    # only accepted proposals, as the paper does): unbiased mean here by symmetry, variance inflated ≲ 15 %.
    assert xs.mean().item() == pytest.approx(1.5, abs=0.02)
    assert xs.var().item() == pytest.approx(0.49, rel=0.2)
    torch.testing.assert_close(log_r, gaussian_1d.log_reward(xs))


def test_only_accepted_proposals_after_burn_in_are_returned(gaussian_1d):
    g = torch.Generator().manual_seed(1)
    mala = MALA(n_steps=30, burn_in=10, step_size=0.5, adapt=False)
    xs, _ = mala.run(gaussian_1d.sample(64, generator=g), gaussian_1d, generator=g)
    assert xs.shape[0] == pytest.approx(mala.last_accept_rate * 20 * 64, abs=1e-6)
    assert 0 < xs.shape[0] < 20 * 64


@pytest.mark.parametrize("eta0", [1e-3, 5.0])
def test_step_size_adapts_to_the_target_acceptance_rate_from_a_bad_start(gaussian_1d, eta0):
    g = torch.Generator().manual_seed(0)
    mala = MALA(n_steps=1000, burn_in=900, step_size=eta0)  # ≥ 700 iterations to climb from 1e-3 at ×1.01
    mala.run(torch.randn(256, 1, generator=g), gaussian_1d, generator=g)
    assert mala.stats()["accept_rate"] == pytest.approx(0.574, abs=0.05)
    # Both starts settle near the same η (≈ 0.87 for std 0.7).
    assert 0.6 < mala.step_size < 1.2


def test_mh_correction_keeps_an_anisotropic_gaussian_invariant():
    # Started at exact samples, the MALA kernel must leave N(μ, diag(0.5², 2²)) invariant. Unadjusted Langevin with
    # the same η = 0.1 would inflate the variance of dim 0 by 25 % (2η / (1 − (1 − η/σ²)²) = 0.3125 vs 0.25).
    target = DiagonalGaussian(dim=2, mean=[1.0, -1.0], std=[0.5, 2.0])
    g = torch.Generator().manual_seed(0)
    mala = MALA(n_steps=40, burn_in=39, step_size=0.1, adapt=False)
    mala.run(target.sample(16384, generator=g), target, generator=g)
    x = mala.last_state
    assert 0.5 < mala.last_accept_rate < 0.99  # the MH step is rejecting something
    torch.testing.assert_close(x.mean(0), target.mean, rtol=0, atol=0.05)
    torch.testing.assert_close(x.var(0), target.std.pow(2), rtol=0.05, atol=0)
    assert abs(torch.corrcoef(x.T)[0, 1].item()) < 0.03


def test_proposals_with_zero_reward_are_always_rejected():
    g = torch.Generator().manual_seed(0)
    mala = MALA(n_steps=50, burn_in=0, step_size=1.0, adapt=False)
    xs, log_r = mala.run(torch.full((256, 1), 0.1), HalfLineGaussian(), generator=g)
    assert (xs > 0).all() and torch.isfinite(log_r).all()
    assert (mala.last_state > 0).all()


def test_non_finite_starting_points_are_refused():
    with pytest.raises(RuntimeError, match="non-finite log-reward at the local-search starting points"):
        MALA(n_steps=2, burn_in=0).run(torch.full((4, 1), -1.0), HalfLineGaussian())


def test_run_is_reproducible_from_a_seeded_generator_and_leaves_the_global_rng_alone(gaussian_1d):
    x0 = torch.linspace(-1, 3, 128)[:, None]
    global_state = torch.get_rng_state()
    runs = []
    for _ in range(2):
        mala = MALA(n_steps=50, burn_in=20, step_size=0.3)
        xs, log_r = mala.run(x0, gaussian_1d, generator=torch.Generator().manual_seed(7))
        runs.append((xs, log_r, mala.step_size))
    assert torch.equal(torch.get_rng_state(), global_state)
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert runs[0][2] == runs[1][2]
    other = MALA(n_steps=50, burn_in=20, step_size=0.3).run(x0, gaussian_1d, torch.Generator().manual_seed(8))[0]
    assert other.shape != runs[0][0].shape or not torch.equal(other, runs[0][0])


def test_step_size_survives_a_checkpoint(gaussian_1d):
    mala = MALA(n_steps=30, burn_in=10, step_size=0.1)
    mala.run(torch.zeros(32, 1), gaussian_1d, generator=torch.Generator().manual_seed(0))
    assert mala.step_size != 0.1
    f = io.BytesIO()
    torch.save(mala.state_dict(), f)
    f.seek(0)
    fresh = MALA(n_steps=30, burn_in=10, step_size=0.1)
    fresh.load_state_dict(torch.load(f, weights_only=True))
    assert fresh.step_size == mala.step_size and fresh.stats() == pytest.approx(mala.stats())
    # Adaptation continues from the restored η: both continue identically.
    a = mala.run(torch.zeros(32, 1), gaussian_1d, generator=torch.Generator().manual_seed(1))[0]
    b = fresh.run(torch.zeros(32, 1), gaussian_1d, generator=torch.Generator().manual_seed(1))[0]
    assert torch.equal(a, b) and fresh.step_size == mala.step_size


def test_run_does_not_build_autograd_graphs(gaussian_1d):
    x0 = torch.zeros(8, 1, requires_grad=True)
    xs, log_r = MALA(n_steps=5, burn_in=0, step_size=0.5).run(x0, gaussian_1d, torch.Generator().manual_seed(0))
    assert not xs.requires_grad and not log_r.requires_grad


@pytest.mark.parametrize(
    "bad, key",
    [
        (dict(n_steps=0), "local_search.n_steps"),
        (dict(n_steps=10, burn_in=10), "local_search.burn_in"),
        (dict(step_size=0.0), "local_search.step_size"),
        (dict(target_accept=1.0), "local_search.target_accept"),
        (dict(every=0), "local_search.every"),
        (dict(batch_size=0), "local_search.batch_size"),
    ],
)
def test_bad_settings_name_the_config_key(bad, key):
    with pytest.raises(ValueError, match=key.replace(".", "\\.")):
        MALA(**bad)

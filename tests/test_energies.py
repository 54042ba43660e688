"""The continuous targets of docs/spec.md §1: shapes, gradients, normalising constants and exact samplers."""

import math

import pytest
import torch

from sampler.energies import (
    ENERGIES,
    GMM9,
    GMM25,
    GMM40,
    EasyFunnel,
    Energy,
    Funnel,
    HardFunnel,
    ManyWell,
)
from sampler.energies.manywell import DOUBLE_WELL_Z, double_well_normaliser

ENERGY_FACTORIES = {
    "gmm9": GMM9,
    "gmm25": GMM25,
    "gmm40": GMM40,
    "funnel": Funnel,
    "easy_funnel": EasyFunnel,
    "manywell32": lambda: ManyWell(dim=32),
    "manywell4": lambda: ManyWell(dim=4),
}


@pytest.fixture(params=list(ENERGY_FACTORIES), ids=list(ENERGY_FACTORIES))
def energy(request) -> Energy:
    return ENERGY_FACTORIES[request.param]()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _test_points(energy: Energy, n: int, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    """Half exact samples, half uniform over the plotting window in every dimension."""
    g = _gen(seed)
    lo, hi = energy.plot_range
    uniform = lo + (hi - lo) * torch.rand(n - n // 2, energy.dim, generator=g)
    return torch.cat([energy.sample(n // 2, generator=g), uniform]).to(dtype)


def _log_mean_exp(v: torch.Tensor) -> float:
    return float(torch.logsumexp(v, 0) - math.log(v.numel()))


# --- interface ------------------------------------------------------------------------------------------------


def test_registry_names_build_energies_with_the_paper_dimensions():
    dims = {"gmm9": 2, "gmm25": 2, "gmm40": 2, "funnel": 10, "hard_funnel": 10, "easy_funnel": 10, "manywell": 32}
    assert {name: ENERGIES[name]().dim for name in dims} == dims
    assert ENERGIES["hard_funnel"] is Funnel and HardFunnel is Funnel
    assert EasyFunnel().x0_std == 1.0 and Funnel().x0_std == 3.0
    assert GMM25(var=0.5).mode_std == pytest.approx(math.sqrt(0.5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_reward_grad_and_sample_have_the_documented_shapes(energy, dtype):
    x = _test_points(energy, 64, dtype)
    log_r, grad = energy.log_reward_and_grad(x)
    assert energy.log_reward(x).shape == (64,) and log_r.shape == (64,) and grad.shape == (64, energy.dim)
    assert log_r.dtype == dtype and grad.dtype == dtype
    assert energy.grad_log_reward(x).shape == (64, energy.dim)
    assert energy.has_sampler and energy.sample(5, generator=_gen()).shape == (5, energy.dim)
    assert energy.sample(0, generator=_gen()).shape == (0, energy.dim)
    assert energy.device == torch.device("cpu")


def test_gradients_are_finite_across_the_plotting_window(energy):
    x = _test_points(energy, 2048, torch.float32)
    log_r, grad = energy.log_reward_and_grad(x)
    assert torch.isfinite(log_r).all() and torch.isfinite(grad).all()


def test_analytic_gradient_equals_autograd_of_log_reward(energy):
    x = _test_points(energy, 256, torch.float64).requires_grad_(True)
    (expected_grad,) = torch.autograd.grad(energy.log_reward(x).sum(), x)
    with torch.no_grad():  # the Langevin parametrisation calls it from inside no_grad
        log_r, grad = energy.log_reward_and_grad(x)
    assert not grad.requires_grad and not log_r.requires_grad
    torch.testing.assert_close(log_r, energy.log_reward(x).detach(), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-8)


def test_same_seed_gives_identical_samples_and_another_seed_does_not(energy):
    a = energy.sample(100, generator=_gen(7))
    b = energy.sample(100, generator=_gen(7))
    c = energy.sample(100, generator=_gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# --- normalising constants ------------------------------------------------------------------------------------


@pytest.mark.parametrize("energy_cls", [GMM9, GMM25, GMM40], ids=["gmm9", "gmm25", "gmm40"])
def test_mixture_log_Z_matches_importance_sampling_from_a_uniform_proposal(energy_cls):
    # q = uniform on the plotting square, which holds all but < 1e-7 of the mass; E_q[r/q] = Z. With n = 2e5 the
    # relative std of the estimate is about 1 % (E_q[w²]/Z² = area/(4π·var·M) ≤ 20), so 0.05 is > 4 sigma.
    energy = energy_cls()
    lo, hi = energy.plot_range
    x = lo + (hi - lo) * torch.rand(200_000, 2, generator=_gen(), dtype=torch.float64)
    log_w = energy.log_reward(x) + 2 * math.log(hi - lo)
    assert _log_mean_exp(log_w) == pytest.approx(energy.log_Z, abs=0.05)


def test_manywell_log_Z_matches_importance_sampling_from_a_two_well_proposal():
    # d = 4; per pair q = [0.2·N(-1.7, 0.6²) + 0.8·N(1.7, 0.6²)](a) · N(0, 1.2²)(b). r/q is bounded (r has e^{-a⁴}
    # and e^{-b²/2} tails) and the estimate's relative std at n = 2e5 is 0.45 %, so 0.03 is > 6 sigma.
    energy = ManyWell(dim=4)
    n, g = 200_000, _gen()
    wells = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.tensor([0.2, 0.8], dtype=torch.float64)),
        torch.distributions.Normal(torch.tensor([-1.7, 1.7], dtype=torch.float64), 0.6),
    )
    centre = torch.where(torch.rand(n, 2, generator=g, dtype=torch.float64) < 0.2, -1.7, 1.7)
    a = centre + 0.6 * torch.randn(n, 2, generator=g, dtype=torch.float64)  # [n, 2]
    b = 1.2 * torch.randn(n, 2, generator=g, dtype=torch.float64)  # [n, 2]
    x = torch.stack([a, b], dim=2).reshape(n, 4)  # interleaved pairs (a_k, b_k)
    log_q = wells.log_prob(a).sum(1) + torch.distributions.Normal(0.0, 1.2).log_prob(b).sum(1)
    assert _log_mean_exp(energy.log_reward(x) - log_q) == pytest.approx(energy.log_Z, abs=0.03)


@pytest.mark.parametrize("energy_cls", [Funnel, EasyFunnel], ids=["funnel", "easy_funnel"])
def test_funnel_log_Z_matches_reverse_importance_sampling_from_exact_samples(energy_cls):
    # For x ~ p = r/Z and any normalised q, E_p[q/r] = 1/Z. Take q with the same conditionals x_i | x0 and a
    # narrower x0 ~ N(0, (⅔s)²): q/p depends on x0 only and has finite variance, so the estimate is sound;
    # a wrong normalisation of either factor of log r, or a wrong sampler, would shift it.
    energy = energy_cls()
    x = energy.sample(200_000, generator=_gen()).double()
    x0, rest = x[:, 0], x[:, 1:]
    q_std = 2.0 / 3.0 * energy.x0_std
    log_q = torch.distributions.Normal(0.0, q_std).log_prob(x0)
    log_q = log_q + torch.distributions.Normal(0.0, torch.exp(0.5 * x0).unsqueeze(1)).log_prob(rest).sum(1)
    log_Z_hat = -_log_mean_exp(log_q - energy.log_reward(x))
    assert log_Z_hat == pytest.approx(energy.log_Z, abs=0.03)


def test_manywell_one_dimensional_constant_by_quadrature():
    # Z_a = ∫ exp(-a⁴ + 6a² + 0.5a) da, the constant every many-well paper quotes.
    assert DOUBLE_WELL_Z == pytest.approx(11784.50927, rel=1e-6)
    assert double_well_normaliser(n_points=100_001) == pytest.approx(DOUBLE_WELL_Z, rel=1e-9)  # grid-converged
    assert ManyWell(dim=32).log_Z == pytest.approx(164.6956753, abs=1e-5)
    assert ManyWell(dim=4).log_Z == pytest.approx(2 * (math.log(11784.50927) + 0.5 * math.log(2 * math.pi)), abs=1e-6)


def test_marginal_2d_density_is_the_exact_pair_marginal():
    xy = _test_points(GMM9(), 100, torch.float64)[:, :2]
    # Funnel: the (x0, x1) marginal is the 2-D funnel itself.
    torch.testing.assert_close(Funnel(dim=10).marginal_log_density_2d(xy), Funnel(dim=2).log_reward(xy))
    # Many-well: one normalised double-well pair.
    expected = ManyWell(dim=2).log_reward(xy) - ManyWell(dim=2).log_Z
    torch.testing.assert_close(ManyWell(dim=32).marginal_log_density_2d(xy), expected)
    # 2-D mixtures: the density itself.
    torch.testing.assert_close(GMM9().marginal_log_density_2d(xy), GMM9().log_reward(xy))


# --- exact samplers -------------------------------------------------------------------------------------------


def _gmm25_mode_counts(seed: int) -> torch.Tensor:
    energy = GMM25()
    x = energy.sample(25_000, generator=_gen(seed))
    nearest = torch.cdist(x, energy.mode_centres).argmin(1)
    return torch.bincount(nearest, minlength=25)


def test_gmm25_mode_frequencies_pass_a_chi_square_test_against_uniform():
    counts = _gmm25_mode_counts(seed=0).double()
    expected = 25_000 / 25
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 51.18  # 0.999 quantile of χ² with 24 degrees of freedom


def test_gmm25_sampler_is_not_stratified():
    # A stratified sampler returns exactly n/25 per mode (the reference's defect, docs/spec.md §1); multinomial counts
    # fluctuate by about √1000 ≈ 32.
    counts = _gmm25_mode_counts(seed=0)
    assert len(set(counts.tolist())) > 1
    assert int((counts - 1000).abs().max()) > 10


def test_gmm40_means_are_fixed_distinct_and_inside_the_box():
    means = GMM40().mode_centres
    assert torch.equal(means, GMM40().mode_centres)
    assert means.shape == (40, 2) and torch.unique(means, dim=0).shape[0] == 40
    assert bool((means.abs() <= 40).all())
    # Provenance: torch.manual_seed(0); torch.rand(40, 2) * 80 - 40, pasted with 4 decimals.
    torch.testing.assert_close(means, torch.rand(40, 2, generator=_gen(0)) * 80 - 40, rtol=0, atol=1e-4)


def test_manywell_rejection_sampler_matches_quadrature_moments():
    a_grid = torch.linspace(-10, 10, 200_001, dtype=torch.float64)
    dens = torch.exp(-(a_grid**4) + 6 * a_grid**2 + 0.5 * a_grid)
    dens = dens / torch.trapezoid(dens, a_grid)
    mean = float(torch.trapezoid(a_grid * dens, a_grid))
    var = float(torch.trapezoid((a_grid - mean) ** 2 * dens, a_grid))

    x = ManyWell(dim=4).sample(100_000, generator=_gen()).double()  # 200k draws of a, 200k of b
    a, b = x[:, 0::2].reshape(-1), x[:, 1::2].reshape(-1)
    # Standard errors: mean ≈ 0.003, var ≈ 0.002 (a is bimodal with var ≈ 1.6); b ~ N(0, 1): 0.002 and 0.003.
    assert float(a.mean()) == pytest.approx(mean, abs=0.015)
    assert float(a.var()) == pytest.approx(var, abs=0.015)
    assert float(b.mean()) == pytest.approx(0.0, abs=0.012)
    assert float(b.var()) == pytest.approx(1.0, abs=0.015)


def test_funnel_sampler_has_the_stated_conditionals():
    x = Funnel().sample(200_000, generator=_gen()).double()
    x0, rest = x[:, 0], x[:, 1:]
    assert float(x0.std()) == pytest.approx(3.0, abs=0.02)
    # x_i e^{-x0/2} ~ N(0, 1) independently of x0
    z = rest * torch.exp(-0.5 * x0).unsqueeze(1)
    assert float(z.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(z.var()) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("dim", [1, 3, 33])
def test_manywell_rejects_odd_dimension(dim):
    with pytest.raises(ValueError, match=rf"^energy\.dim must be even for manywell \(got {dim}\)$"):
        ManyWell(dim=dim)

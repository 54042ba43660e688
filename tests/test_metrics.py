"""Evaluation metrics (docs/spec.md §8): each statistic on cases with a known answer, and ``evaluate`` end to end."""

import math

import pytest
import torch

from sampler.energies.base import Energy
from sampler.evaluation import (
    effective_sample_size,
    evaluate,
    mmd_rbf,
    mode_coverage,
    plot_metric_curves,
    plot_samples,
    w2_floor,
    wasserstein2,
)
from sampler.evaluation import metrics as metrics_module
from sampler.gfn.trajectories import Trajectories


class StandardGaussian(Energy):
    """N(0, I_d) with r(x) = exp(-½‖x‖²), so log Z = (d/2) log 2π."""

    plot_range = (-4.0, 4.0)

    def __init__(self, dim: int = 2):
        super().__init__()
        self.dim = dim
        self.log_Z = 0.5 * dim * math.log(2 * math.pi)

    @property
    def name(self) -> str:
        return f"StandardGaussian{self.dim}"

    def log_reward(self, x):
        return -0.5 * x.pow(2).sum(-1)

    def sample(self, n, generator=None):
        return torch.randn(n, self.dim, generator=generator)

    def marginal_log_density_2d(self, xy):
        return -0.5 * xy.pow(2).sum(-1)


class SingleModeGaussian(StandardGaussian):
    """The same target seen as a one-component mixture (enables mode coverage)."""

    mode_std = 1.0

    @property
    def mode_centres(self):
        return torch.zeros(1, self.dim)


class UnknownGaussian(StandardGaussian):
    """No exact sampler and no known log Z: the metrics that need them must be absent."""

    def __init__(self, dim: int = 2):
        super().__init__(dim)
        self.log_Z = None

    def sample(self, n, generator=None):  # used only by the fake sampler, not seen as an exact sampler
        return torch.randn(n, self.dim, generator=generator)

    @property
    def has_sampler(self) -> bool:
        return False


class ExactOneStepGFN:
    """A one-step 'sampler' s_0 = 0 → x ~ N(0, I) with P_B ≡ 1: every log-weight equals log Z exactly."""

    def __init__(self, energy: StandardGaussian):
        self.energy = energy

    def _trajectories(self, x):
        log_pf = (-0.5 * x.pow(2).sum(-1) - 0.5 * x.shape[1] * math.log(2 * math.pi))[:, None]  # [B, 1]
        return Trajectories(
            states=torch.stack([torch.zeros_like(x), x], dim=1),
            log_pf=log_pf,
            log_pb=torch.zeros_like(log_pf),
            log_reward=self.energy.log_reward(x),
            log_Z=torch.tensor(1.5),
        )

    def rollout_forward(self, n, exploration_std=None, generator=None):
        return self._trajectories(StandardGaussian.sample(self.energy, n, generator))

    def rollout_backward(self, x, generator=None):
        return self._trajectories(x)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


def test_w2_of_a_set_with_itself_is_zero(generator):
    x = torch.randn(300, 3, generator=generator)
    assert wasserstein2(x, x) == pytest.approx(0.0, abs=1e-7)


def test_w2_of_a_translate_is_the_translation_length(generator):
    # Every permutation moves the mean by the same v, so the identity plan is optimal and W2 = ‖v‖.
    x = torch.randn(500, 2, generator=generator)
    v = torch.tensor([3.0, -4.0])
    assert wasserstein2(x, x + v) == pytest.approx(5.0, abs=1e-6)


def test_w2_between_independent_gaussian_samples_is_small_but_not_zero(generator):
    x = torch.randn(2000, 2, generator=generator)
    y = torch.randn(2000, 2, generator=generator)
    assert 0.05 < wasserstein2(x, y) < 0.4


def test_ess_is_one_for_equal_weights_and_one_over_k_for_one_dominant_weight():
    assert effective_sample_size(torch.full((100,), -3.0)) == pytest.approx(1.0, abs=1e-12)
    log_w = torch.zeros(100)
    log_w[7] = 1000.0  # would overflow exp() in float32 and float64
    assert effective_sample_size(log_w) == pytest.approx(1 / 100, rel=1e-9)


def test_ess_matches_the_direct_formula(generator):
    log_w = torch.randn(1000, generator=generator, dtype=torch.float64) * 2
    w = log_w.exp()
    expected = float(w.sum() ** 2 / (1000 * w.pow(2).sum()))
    assert effective_sample_size(log_w) == pytest.approx(expected, rel=1e-10)


def test_mmd_is_zero_for_identical_sets_and_grows_with_a_shift(generator):
    x = torch.randn(400, 2, generator=generator)
    y = torch.randn(400, 2, generator=generator)
    assert mmd_rbf(x, x) == pytest.approx(0.0, abs=1e-6)
    near, far = mmd_rbf(x, y), mmd_rbf(x, y + 2.0)
    assert 0 < near < far


def test_mode_coverage_counts_modes_with_a_sample_nearby():
    centres = torch.tensor([[-5.0, -5.0], [-5.0, 5.0], [5.0, -5.0], [5.0, 5.0]])
    assert mode_coverage(centres.clone(), centres, std=0.5) == 1.0
    assert mode_coverage(centres[:2] + 0.1, centres, std=0.5) == 0.5
    assert mode_coverage(torch.zeros(10, 2), centres, std=0.5) == 0.0  # equidistant but too far from all


def test_evaluate_on_an_exact_sampler_gives_exact_log_z_and_full_ess(generator):
    energy = SingleModeGaussian(2)
    metrics, samples = evaluate(ExactOneStepGFN(energy), energy, K=500, generator=generator)
    assert set(metrics) == {
        "log_Z_elbo",
        "log_Z_rw",
        "log_Z_learned",
        "dlogZ",
        "dlogZ_rw",
        "eubo",
        "elbo_eubo_gap",
        "ess",
        "w2",
        "w2_floor",
        "mmd",
        "mode_coverage",
        "mode_weight_tv",
        "entropic_mode_coverage",
        "n_energy_calls",
        "eval_K",
    }
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["dlogZ"] < 1e-5 and metrics["dlogZ_rw"] < 1e-5
    assert metrics["eubo"] == pytest.approx(energy.log_Z, abs=1e-5)
    assert abs(metrics["elbo_eubo_gap"]) < 1e-5  # both bounds are exact
    assert metrics["entropic_mode_coverage"] == 1.0  # one mode
    assert metrics["n_energy_calls"] == 0.0  # evaluation is not counted
    assert metrics["ess"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["log_Z_learned"] == 1.5
    assert metrics["mode_coverage"] == 1.0
    assert metrics["eval_K"] == 500.0
    assert samples.shape == (500, 2) and not samples.requires_grad


def test_evaluate_omits_metrics_that_need_exact_samples_or_a_known_log_z(generator):
    energy = UnknownGaussian(2)
    metrics, _ = evaluate(ExactOneStepGFN(energy), energy, K=100, generator=generator)
    assert set(metrics) == {"log_Z_elbo", "log_Z_rw", "log_Z_learned", "ess", "n_energy_calls", "eval_K"}


def test_evaluate_rejects_fewer_than_two_trajectories():
    energy = StandardGaussian(2)
    with pytest.raises(ValueError, match="K >= 2"):
        evaluate(ExactOneStepGFN(energy), energy, K=1)


def test_w2_floor_is_cached_and_not_resampled(monkeypatch):
    energy = StandardGaussian(3)
    first = w2_floor(energy, 200, seed=123)
    assert metrics_module._W2_FLOOR_CACHE[(energy.name, 3, 200, 123)] == first

    def no_sampling(*args, **kwargs):
        raise AssertionError("w2_floor resampled despite a cached value")

    monkeypatch.setattr(energy, "sample", no_sampling)
    assert w2_floor(energy, 200, seed=123) == first


@pytest.mark.parametrize(
    "energy",
    [StandardGaussian(2), StandardGaussian(10), UnknownGaussian(10)],
    ids=["2d", "10d-with-marginal", "10d-without-marginal"],
)
def test_plot_samples_writes_a_png(energy, tmp_path, generator):
    if isinstance(energy, UnknownGaussian):
        energy.marginal_log_density_2d = lambda xy: None
    samples = torch.randn(300, energy.dim, generator=generator)
    exact = torch.randn(300, energy.dim, generator=generator) if energy.dim > 2 else None
    out = plot_samples(energy, samples, tmp_path / "figs" / "samples.png", exact=exact)
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_metric_curves_reads_a_sparse_csv(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("step,loss,dlogZ,w2\n0,1.5,,\n100,1.2,0.8,3.0\n200,0.9,,\n200,,0.5,2.5\n")
    out = plot_metric_curves(csv_path, tmp_path / "plots" / "curves.png")
    assert out.exists() and out.stat().st_size > 0

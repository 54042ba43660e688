"""Energy-based models learned from data (sampler.ebm): data sets, energy networks, the Langevin chain, PCD/CD and
GFN negatives, resume, evaluation, generation and plots — each in seconds on one thread."""

from __future__ import annotations

import copy
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sampler.ebm import (
    DATA_SETS,
    ChainBuffer,
    CNNEnergy,
    DigitsData,
    EBMData,
    EBMEnergy,
    EBMRecipe,
    EnergyMonitor,
    GFNNegatives,
    LangevinNegatives,
    MLPEnergy,
    NonFiniteEBMLossError,
    contrastive_loss,
    generate,
    langevin,
    load_array_data,
    make_data,
    temperature_schedule,
    toy_data,
)
from sampler.ebm.evaluation import (
    IMAGE_KEYS,
    TOY_KEYS,
    ais_log_z,
    classifier_score,
    digit_classifier,
    evaluate_ebm,
    kde_nll,
    kl_quadrature,
    log_z_quadrature,
    nll_quadrature,
)
from sampler.energies.base import counting_energy_calls
from sampler.gfn import DiffusionGFN
from sampler.recipe import Recipe, param_groups

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


class Quadratic(nn.Module):
    """E(x) = ‖x − m‖² / (2 s²): the model N(m, s²I), with log Z = (d/2) log(2π s²)."""

    def __init__(self, dim: int = 2, s: float = 1.0, m: float = 0.0):
        super().__init__()
        self.dim, self.s = dim, s
        self.m = nn.Parameter(torch.full((dim,), float(m)))

    def forward(self, x):
        return (x - self.m).pow(2).sum(-1) / (2 * self.s**2)


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------------------------------------------ data
@pytest.mark.parametrize("name", [n for n in DATA_SETS if n != "digits"])
def test_toy_sets_are_seeded_2d_splits_inside_their_box(name):
    a, b, c = toy_data(name, 300, 100, seed=1), toy_data(name, 300, 100, seed=1), toy_data(name, 300, 100, seed=2)
    assert a.train.shape == (300, 2) and a.test.shape == (100, 2) and a.dim == 2
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.train, c.train)
    lo, hi = a.bounds
    inside = ((a.train > lo) & (a.train < hi)).all(1).float().mean()
    assert inside > 0.99


def test_8gaussians_density_is_normalised_and_is_the_data_law():
    data = toy_data("8gaussians", 4000, 10)
    xy = torch.stack(torch.meshgrid(*[torch.linspace(-4.5, 4.5, 401, dtype=torch.float64)] * 2, indexing="ij"), -1)
    mass = data.log_density(xy.reshape(-1, 2)).exp().sum() * (9 / 400) ** 2
    assert abs(float(mass) - 1) < 1e-3
    # the data's mean log-density equals minus the entropy log 8 + log(2πe σ²) up to sampling error
    sigma2 = (0.5 / 1.414) ** 2
    entropy = math.log(8) + math.log(2 * math.pi * math.e * sigma2)
    assert abs(float(-data.log_density(data.train.double()).mean()) - entropy) < 0.05


def test_digits_are_the_bundled_images_scaled_to_plus_minus_one():
    d = DigitsData(seed=0)
    assert d.dim == 64 and d.image_shape == (8, 8)
    assert len(d.train) + len(d.test) == 1797 and len(d.test) == round(0.2 * 1797)
    assert float(d.train.min()) == -1.0 and float(d.train.max()) == 1.0
    assert set(d.train_labels.tolist()) == set(range(10))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: make_data("spiral"), "data set must be one of 8gaussians"),
        (lambda tmp: toy_data("moons", n_train=0), "n_train and n_test must be ≥ 1"),
        (lambda tmp: EBMData(torch.zeros(5), torch.zeros(5, 1)), "must be a non-empty [N, d] array"),
        (lambda tmp: EBMData(torch.zeros(5, 2), torch.zeros(5, 3)), "same dimension"),
        (lambda tmp: load_array_data(tmp / "missing.npy"), "does not exist"),
        (lambda tmp: load_array_data(_save(tmp / "x.npy", np.zeros((4, 2, 2)))), r"must hold an \[N, d\] array"),
        (lambda tmp: load_array_data(_save(tmp / "x.txt", np.zeros((4, 2)))), "use .npy, .pt or .csv"),
    ],
)
def test_bad_data_is_one_line(tmp_path, make, message):
    with pytest.raises(ValueError, match=message if message.startswith("data set") else None) as err:
        make(tmp_path)
    assert re.search(message if "\\" in message else re.escape(message), _one_line(err))


def _save(path: Path, arr) -> Path:
    if path.suffix == ".npy":
        np.save(path, arr)
    else:
        path.write_text("1,2\n")
    return path


def test_a_users_array_file_is_split_by_seed(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    data = load_array_data(_save(tmp_path / "mine.npy", x), test_fraction=0.2, seed=3)
    assert data.dim == 3 and data.train.shape == (40, 3) and data.test.shape == (10, 3) and data.name == "mine"
    both = torch.cat([data.train, data.test])
    assert torch.equal(both.sort(0).values, torch.as_tensor(x).sort(0).values)


# ------------------------------------------------------------------------------------------------------ nets
@pytest.mark.parametrize("kw", [{}, {"spectral_norm": True}, {"residual": True, "dropout": 0.2, "activation": "elu"}])
def test_mlp_energy_maps_points_to_one_energy_each(kw):
    torch.manual_seed(0)
    net = MLPEnergy(3, hidden=(16, 16), **kw)
    assert net(torch.randn(7, 3)).shape == (7,)
    assert CNNEnergy((8, 8), channels=(4, 8, 8), spectral_norm=kw.get("spectral_norm", False))(
        torch.randn(5, 64)
    ).shape == (5,)


def test_ebm_energy_is_minus_e_and_its_samplers_never_reach_theta():
    torch.manual_seed(0)
    net = MLPEnergy(2, hidden=(16, 16), dropout=0.5)
    energy = EBMEnergy(net)
    x = torch.randn(6, 2)
    net.eval()
    expected = -net(x).detach()
    net.train()
    # dropout is off while sampling (the target is a fixed function), and the module's mode is restored
    torch.testing.assert_close(energy.log_reward(x), expected)
    torch.testing.assert_close(energy.log_reward(x), expected)
    assert net.training
    lr, grad = energy.log_reward_and_grad(x)
    xg = x.clone().requires_grad_(True)
    net.eval()
    (ref,) = torch.autograd.grad(-net(xg).sum(), xg)
    net.train()
    torch.testing.assert_close(grad, ref)
    # a loss through log_reward (as a reparametrised GFN objective builds) leaves θ's gradients untouched
    xr = x.clone().requires_grad_(True)
    energy.log_reward(xr).sum().backward()
    assert xr.grad is not None and all(p.grad is None for p in net.parameters())
    assert all(p.requires_grad for p in net.parameters())
    with counting_energy_calls(energy):
        energy.log_reward_and_grad(x)
        energy.log_reward(x[:2])
    assert energy.n_energy_calls == 8


# ------------------------------------------------------------------------------------------------- langevin
def test_langevin_with_matched_noise_samples_the_model():
    # σ = √(2η) is unadjusted Langevin for exp(−E): on N(1, 0.5²) its law has the model's mean and (up to the
    # O(η) discretisation bias of ULA, 1/(1 − η/(2s²)) = 1.01 here) its variance
    g = torch.Generator().manual_seed(0)
    energy = EBMEnergy(Quadratic(2, s=0.5, m=1.0))
    x, stats, hist = langevin(energy, torch.zeros(4000, 2), 300, 0.005, math.sqrt(0.01), g, record_every=100)
    assert abs(float(x.mean()) - 1.0) < 0.03
    assert abs(float(x.var(0).mean()) / 0.25 - 1.01) < 0.06
    assert len(hist) == 4 and 0.95 < stats.acceptance <= 1.0 and stats.n_energy_calls == 4000 * 301
    # with Metropolis corrections at a large step, proposals are rejected and the law is still exact
    x, stats, _ = langevin(energy, torch.ones(4000, 2), 300, 0.2, math.sqrt(0.4), g, metropolis=True)
    assert 0.2 < stats.acceptance < 0.95
    assert abs(float(x.var(0).mean()) / 0.25 - 1.0) < 0.08


def test_langevin_clips_each_chains_gradient_and_respects_the_box():
    energy = EBMEnergy(Quadratic(2, s=0.1))
    x0 = torch.tensor([[5.0, 0.0], [0.01, 0.0]])
    x, stats, _ = langevin(energy, x0, 1, 0.01, 0.0, grad_clip=1.0)
    # the far chain's gradient (500) is clipped to norm 1: it moves η·1; the near one (1) is not clipped
    torch.testing.assert_close(x[0], torch.tensor([4.99, 0.0]))
    torch.testing.assert_close(x[1], torch.tensor([0.0, 0.0]), atol=1e-6, rtol=0)
    assert stats.clipped == 0.5
    x, _, _ = langevin(energy, torch.full((3, 2), 0.95), 5, 0.5, 1.0, torch.Generator().manual_seed(0),
                       clamp=(-1.0, 1.0))  # fmt: skip
    assert x.abs().max() <= 1.0


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"n_steps": 0}, "n_steps must be an integer ≥ 1 (got 0)"),
        ({"step_size": 0.0}, "step_size must be > 0 (got 0.0)"),
        ({"noise_scale": -1.0}, "noise_scale must be ≥ 0"),
        ({"grad_clip": 0.0}, "grad_clip must be > 0 or null"),
    ],
)
def test_bad_chain_settings_are_one_line(kw, message):
    with pytest.raises(ValueError) as err:
        LangevinNegatives(**kw)
    assert message in _one_line(err)


def test_bad_buffer_settings_are_one_line():
    for kw, message in [({"reinit_prob": 1.5}, "reinit_prob must be in [0, 1] (got 1.5)"),
                        ({"capacity": 0}, "capacity must be ≥ 1")]:  # fmt: skip
        with pytest.raises(ValueError) as err:
            ChainBuffer(**kw)
        assert message in _one_line(err)


# ---------------------------------------------------------------------------------------------------- buffer
def test_buffer_draws_distinct_chains_and_restarts_them_from_noise():
    g = torch.Generator().manual_seed(0)
    buf = ChainBuffer(100, 2, reinit_prob=0.0, bounds=(-2.0, 3.0))
    x, idx = buf.draw(100, g)
    assert len(set(idx.tolist())) == 100 and x.min() >= -2 and x.max() <= 3
    buf.update(idx, torch.full((100, 2), 7.0))
    x, idx = buf.draw(40, g)
    assert torch.equal(x, torch.full((40, 2), 7.0)) and float(buf.age[idx].min()) == 1
    buf.reinit_prob = 1.0
    x, idx = buf.draw(40, g)
    assert x.max() <= 3 and float(buf.age[idx].max()) == 0 and buf.stats()["buffer_reinit"] == 1.0


def test_contrastive_loss_is_the_formula():
    e_pos, e_neg = torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.0, 5.0])
    expected = 2.0 - 1.0 + 0.1 * ((1 + 9) / 2 + (4 + 0 + 25) / 3)
    torch.testing.assert_close(contrastive_loss(e_pos, e_neg, 0.1), torch.tensor(expected))


# ---------------------------------------------------------------------------------------------------- recipe
def _pcd(seed=0, n_steps=5):
    torch.manual_seed(seed)
    data = toy_data("8gaussians", 500, 100)
    net = MLPEnergy(2, hidden=(16, 16))
    neg = LangevinNegatives(n_steps=n_steps, buffer=ChainBuffer(256, 2, 0.05, data.bounds, data_reinit=0.5))
    recipe = EBMRecipe(net, neg, data.train, batch_size=32, grad_clip=10.0, bounds=data.bounds)
    return net, recipe, torch.optim.Adam(net.parameters(), lr=1e-3)


def _gfn(seed=0):
    torch.manual_seed(seed)
    data = toy_data("moons", 500, 100)
    net = MLPEnergy(2, hidden=(16, 16))
    energy = EBMEnergy(net, bounds=data.bounds, t_scale=1.0)
    gfn = DiffusionGFN(energy, T=5, hidden_dim=16, engine="reference")
    gfn_opt = torch.optim.Adam(param_groups(gfn, 1e-3, 1e-2))
    neg = GFNNegatives(Recipe(gfn, "tb", batch_size=32), gfn_opt, steps_per_ebm_step=2)
    recipe = EBMRecipe(net, neg, data.train, batch_size=32)
    return net, recipe, torch.optim.Adam(net.parameters(), lr=1e-3)


@pytest.mark.parametrize("build", [_pcd, _gfn], ids=["pcd", "gfn"])
def test_resume_from_the_recipe_state_is_bit_identical(build):
    net, recipe, opt = build()
    g = torch.Generator().manual_seed(1)
    for s in range(3):
        recipe.step(s, opt, generator=g)
    saved = copy.deepcopy({"net": net.state_dict(), "opt": opt.state_dict(), "recipe": recipe.state_dict(),
                           "gen": g.get_state()})  # fmt: skip
    for s in range(3, 6):
        last = recipe.step(s, opt, generator=g)

    net2, recipe2, opt2 = build(seed=99)  # other initial weights: everything must come from the state
    net2.load_state_dict(saved["net"])
    opt2.load_state_dict(saved["opt"])
    recipe2.load_state_dict(saved["recipe"])
    g2 = torch.Generator()
    g2.set_state(saved["gen"])
    for s in range(3, 6):
        last2 = recipe2.step(s, opt2, generator=g2)
    for a, b in zip(net.state_dict().values(), net2.state_dict().values()):
        assert torch.equal(a, b)
    assert last == last2
    if isinstance(recipe.negatives, LangevinNegatives):
        assert torch.equal(recipe.negatives.buffer.states, recipe2.negatives.buffer.states)


def test_a_step_reports_energies_gap_sampler_and_buffer_stats():
    net, recipe, opt = _pcd()
    stats = recipe.step(0, opt, generator=torch.Generator().manual_seed(0))
    for key in (
        "loss",
        "energy_real",
        "energy_fake",
        "energy_gap",
        "grad_norm",
        "chain_accept",
        "chain_step_norm",
        "buffer_size",
        "buffer_mean_age",
        "buffer_reinit",
        "n_energy_calls",
        "n_energy_calls_langevin",
    ):
        assert math.isfinite(stats[key]), key
    assert stats["energy_gap"] == pytest.approx(stats["energy_fake"] - stats["energy_real"])
    assert stats["n_energy_calls"] == 32 * (5 + 1)  # the chain's evaluations, not the loss's


def test_gfn_negatives_train_the_gfn_on_the_current_energy_and_count_its_calls():
    net, recipe, opt = _gfn()
    before = [p.clone() for p in recipe.negatives.gfn.parameters()]
    stats = recipe.step(0, opt, generator=torch.Generator().manual_seed(0))
    assert stats["gfn_steps"] == 2 and math.isfinite(stats["gfn_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, recipe.negatives.gfn.parameters()))
    # two TB steps of 32 terminal rewards each, then 32 negatives: 96 points
    assert stats["n_energy_calls"] == stats["n_energy_calls_gfn"] == 96


def test_gfn_negatives_refuse_what_the_gfn_cannot_take():
    from sampler.energies import GMM9

    gfn = DiffusionGFN(GMM9(), T=5, hidden_dim=16)
    with pytest.raises(ValueError) as err:
        GFNNegatives(Recipe(gfn, "tb"), torch.optim.Adam(gfn.parameters()))
    assert "must target the EBM" in _one_line(err)
    egfn = DiffusionGFN(EBMEnergy(MLPEnergy(2, (8,))), T=5, hidden_dim=16)
    with pytest.raises(ValueError) as err:
        GFNNegatives(Recipe(egfn, "tb", phases="both_ways"), torch.optim.Adam(egfn.parameters()))
    assert "no exact sampler" in _one_line(err)
    with pytest.raises(ValueError) as err:
        GFNNegatives(Recipe(egfn, "tb"), torch.optim.Adam(egfn.parameters()), steps_per_ebm_step=0)
    assert "steps_per_ebm_step must be ≥ 1" in _one_line(err)


def test_a_non_finite_loss_raises_one_line_and_leaves_theta_alone():
    net, recipe, opt = _pcd()
    with torch.no_grad():
        net.out.bias.fill_(float("nan"))
    before = [p.clone() for p in net.parameters()]
    with pytest.raises(NonFiniteEBMLossError) as err:
        recipe.step(4, opt, generator=torch.Generator().manual_seed(0))
    assert "non-finite EBM loss at step 4" in _one_line(err)
    for a, b in zip(before, net.parameters()):
        assert torch.equal(a, b) or (a.isnan() & b.isnan()).all()


def test_gap_and_explosion_warnings_are_rate_limited(caplog):
    mon = EnergyMonitor(every=10, limit=100.0)
    with caplog.at_level(logging.WARNING, logger="sampler.ebm.learning"):
        for s in range(25):
            mon.check(s, torch.tensor([1.0]), torch.tensor([0.5]))  # gap −0.5
        mon.check(25, torch.tensor([0.0]), torch.tensor([500.0]))
    lines = [r.getMessage() for r in caplog.records]
    assert sum("energy gap" in m for m in lines) == 3  # steps 0, 10, 20
    assert "(10 steps since the last warning)" in lines[1]
    assert sum("|energy| reached 500" in m for m in lines) == 1


def test_plain_cd_starts_the_chains_at_the_data():
    energy = EBMEnergy(Quadratic(2))
    x_pos = torch.full((8, 2), 3.0)
    neg = LangevinNegatives(n_steps=1, step_size=0.1, noise_scale=0.0)
    x, stats = neg.sample(energy, x_pos, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, torch.full((8, 2), 2.7))  # one step of x − η x from the data
    assert "buffer_size" not in stats


# ------------------------------------------------------------------------------------------------ evaluation
def test_quadrature_normalises_a_gaussian_model_exactly():
    net = Quadratic(2, s=0.7)
    torch.testing.assert_close(log_z_quadrature(net, (-6, 6)), math.log(2 * math.pi * 0.49), rtol=0, atol=1e-6)
    x = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0)) * 0.7
    expected = float((x.double().pow(2).sum(1) / (2 * 0.49)).mean()) + math.log(2 * math.pi * 0.49)
    assert nll_quadrature(net, x, (-6, 6)) == pytest.approx(expected, abs=1e-5)
    # KL(N(0, 0.7²I) ‖ N((0.5, 0.5), 0.7²I)) = ‖Δm‖² / (2 s²) = 0.5 / 0.98
    log_p = lambda z: -z.pow(2).sum(1) / (2 * 0.49) - math.log(2 * math.pi * 0.49)  # noqa: E731
    assert kl_quadrature(log_p, Quadratic(2, 0.7, 0.5), (-6, 6)) == pytest.approx(0.5 / 0.98, abs=1e-4)


def test_ais_log_z_agrees_with_quadrature_on_a_random_network():
    torch.manual_seed(0)
    net = MLPEnergy(2, hidden=(32, 32))
    with torch.no_grad():  # a random network, sharpened, and confined by a quadratic: a bumpy density in the box
        for p in net.parameters():
            p.mul_(1.5)
    confined = nn.Module()
    confined.dim = 2
    confined.forward = lambda x: net(x) + x.pow(2).sum(-1) / 2  # noqa: E731
    confined.net = net
    exact = log_z_quadrature(confined, (-7, 7), 500)
    est = ais_log_z(confined, 2, n_particles=2000, n_temps=200, generator=torch.Generator().manual_seed(0))
    assert abs(est - exact) < 0.05, (est, exact)


def test_evaluate_ebm_gives_exactly_the_documented_keys():
    torch.manual_seed(0)
    net = MLPEnergy(2, hidden=(8,))
    g8, moons = toy_data("8gaussians", 300, 200), toy_data("moons", 300, 200)
    m = evaluate_ebm(net, g8, g8.test[:100], 123, kde=1.0, grid_n=100)
    assert set(m) == set(TOY_KEYS) and m["n_energy_calls"] == 123.0
    assert all(isinstance(v, float) and math.isfinite(v) for v in m.values())
    assert m["kl_true"] > 0 and m["nll_test"] > m["kl_true"]
    assert set(evaluate_ebm(net, moons, moons.test[:100], kde=1.0, grid_n=100)) == set(TOY_KEYS) - {"kl_true"}


def test_evaluate_ebm_estimates_log_z_by_ais_beyond_two_dimensions():
    # N(0, 0.7²I) in 3-D: the exact test NLL is the mean of ‖x‖²/(2s²) plus (3/2) log(2π s²)
    g = torch.Generator().manual_seed(0)
    x = 0.7 * torch.randn(400, 3, generator=g)
    data = EBMData(x[:200], x[200:], name="gauss3")
    m = evaluate_ebm(Quadratic(3, s=0.7), data, x[:100], kde=1.0, generator=g)
    assert set(m) == set(TOY_KEYS) - {"kl_true"}
    exact = float((data.test.double().pow(2).sum(1) / (2 * 0.49)).mean()) + 1.5 * math.log(2 * math.pi * 0.49)
    assert abs(m["nll_test"] - exact) < 0.05


def test_images_without_labels_get_the_mmd_and_no_classifier_score():
    data = EBMData(torch.rand(30, 4) * 2 - 1, torch.rand(10, 4) * 2 - 1, image_shape=(2, 2), bounds=(-1, 1))
    m = evaluate_ebm(CNNEnergy((2, 2), channels=(2, 2, 2)), data, torch.zeros(8, 4), 5)
    assert set(m) == {"mmd", "n_energy_calls"} and m["n_energy_calls"] == 5.0


def test_the_data_classes_a_config_names_hold_the_same_points_as_the_functions(tmp_path):
    from sampler.ebm.data import ArrayData, ToyData

    a, b = ToyData("rings", 50, 20, seed=4), toy_data("rings", 50, 20, seed=4)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test) and a.bounds == b.bounds == (-4.0, 4.0)
    path = _save(tmp_path / "p.npy", np.arange(40, dtype=np.float32).reshape(20, 2))
    c, d = ArrayData(path, 0.25, seed=1), load_array_data(path, 0.25, seed=1)
    assert isinstance(c, EBMData) and torch.equal(c.train, d.train) and c.test.shape == (5, 2)


def test_kde_baseline_is_close_to_the_true_nll_on_8gaussians():
    data = toy_data("8gaussians", 1500, 500)
    nll, bw = kde_nll(data.train, data.test)
    true_nll = float(-data.log_density(data.test.double()).mean())
    assert 0 < nll - true_nll < 0.15 and 0.05 < bw < 0.5


def test_the_digit_classifier_is_confident_on_real_digits_and_not_on_noise():
    data = DigitsData()
    clf = digit_classifier(data)
    conf, ent = classifier_score(clf, data.test)
    assert conf > 0.9 and ent > 0.95 * math.log(10)
    m = evaluate_ebm(CNNEnergy(channels=(4, 4, 4)), data, torch.zeros(50, 64), 7, classifier=clf)
    assert set(m) == set(IMAGE_KEYS)
    assert m["class_entropy"] == 0.0  # fifty identical blank images: one predicted class


# ------------------------------------------------------------------------------------------------ generation
def test_annealing_runs_from_ten_to_one_and_generation_has_three_methods():
    temps = temperature_schedule(5, 10.0, 1.0)
    assert temps[0] == pytest.approx(10.0) and temps[-1] == pytest.approx(1.0) and temps == sorted(temps)[::-1]
    g = torch.Generator().manual_seed(0)
    net = Quadratic(2, s=0.5)
    for method in ("noise", "annealed"):
        # N(0, 0.5²) relaxes in ~25 steps at η = 0.01; the annealed chain's last steps are at T ≈ 1
        x, _, _ = generate(net, 1000, method, bounds=(-3, 3), n_steps=400, step_size=0.01, noise_scale=math.sqrt(0.02),
                           generator=g)  # fmt: skip
        assert abs(float(x.var(0).mean()) / 0.25 - 1) < 0.15
    buf = ChainBuffer(64, 2, bounds=(-3, 3))
    with pytest.raises(ValueError) as err:
        generate(net, 10, "buffer", buffer=buf)
    assert "needs the (filled) PCD chain buffer" in _one_line(err)
    buf.draw(1, g)
    x, _, _ = generate(net, 10, "buffer", buffer=buf, n_steps=2, generator=g)
    assert x.shape == (10, 2)


def test_plots_write_pngs_and_leave_no_temporary_files(tmp_path):
    from sampler.ebm.plots import plot_chains, plot_digit_grid, plot_landscape

    data = toy_data("moons", 200, 50)
    net = MLPEnergy(2, hidden=(8,))
    x, _, hist = generate(net, 20, bounds=data.bounds, n_steps=4, record_every=2, generator=torch.Generator())
    plot_landscape(net, data, tmp_path / "landscape.png", samples=x)
    plot_chains(hist, tmp_path / "chains.png", net, data)
    plot_digit_grid(torch.rand(12, 64) * 2 - 1, tmp_path / "digits.png")
    plot_chains([torch.rand(3, 64)] * 4, tmp_path / "digit_chains.png", image_shape=(8, 8))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["chains.png", "digit_chains.png", "digits.png", "landscape.png"]
    assert all((tmp_path / n).read_bytes()[:4] == b"\x89PNG" for n in names)


def test_the_docs_example_runs(monkeypatch):
    text = (ROOT / "docs" / "ebm.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    # the same code at a size that runs in a second (the KDE baseline's cross-validation dominates otherwise)
    code = code.replace("range(2000)", "range(3)").replace("n_steps=60", "n_steps=3")
    code = code.replace('toy_data("moons", seed=0)', 'toy_data("moons", 300, 200, seed=0)')
    namespace: dict = {}
    exec(compile(code, "docs/ebm.md", "exec"), namespace)  # noqa: S102
    assert math.isfinite(namespace["metrics"]["nll_test"])

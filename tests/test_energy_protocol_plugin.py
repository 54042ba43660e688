"""The plug-in energy protocol: declared σ², plain protocol attributes, their spelling, per-axis plot windows,
``has_sampler`` and the device of an energy without tensors."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from hydra.utils import instantiate

from sampler.energies import ENERGIES, Energy
from sampler.energies.protocol import check_energy, declared_t_scale, resolve_t_scale
from sampler.evaluation import plots
from sampler.training.config_check import ConfigError
from tests.conftest import compose_cfg

# σ² each built-in target was trained with when its config group still wrote model.t_scale.
PROTOCOL_T_SCALE = {"gmm9": 5.0, "gmm25": 5.0, "gmm40": 5.0, "funnel": 1.0, "easy_funnel": 1.0, "manywell": 1.0}


class Banana(Energy):
    """A 2-D banana, log r = −½x₀²/4 − ½(x₁ − x₀²/4)², declaring no σ²."""

    def __init__(self, dim: int = 2):
        super().__init__()
        self.dim = dim

    def log_reward(self, x):
        return -0.125 * x[:, 0] ** 2 - 0.5 * (x[:, 1] - 0.25 * x[:, 0] ** 2) ** 2


class WideBanana(Banana):
    t_scale = 2.0


def _ring_centres(m: int = 4) -> torch.Tensor:
    angle = torch.arange(m) * 2 * math.pi / m
    return 3.0 * torch.stack([angle.cos(), angle.sin()], 1)  # [m, 2]


class RingAttribute(Banana):
    """Mode centres set as a plain attribute, with unequal weights."""

    def __init__(self):
        super().__init__()
        self.mode_centres = _ring_centres()
        self.mode_weights = torch.tensor([0.4, 0.3, 0.2, 0.1])
        self.mode_std = 0.5


class RingBuffer(Banana):
    """Mode centres registered as a buffer (so ``.to()`` moves them)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mode_centres", _ring_centres())
        self.mode_std = 0.5


# ------------------------------------------------------------------------------------------------ σ²
def test_an_energy_without_t_scale_gets_one_with_one_log_line(caplog):
    energy = Banana()
    assert declared_t_scale(energy) == (1.0, False)
    with caplog.at_level(logging.INFO, logger="sampler.energies.base"):
        assert resolve_t_scale(None, energy) == 1.0
        assert resolve_t_scale(None, energy) == 1.0  # a second sampler of the same energy (a teacher) says nothing
    lines = [r.getMessage() for r in caplog.records if r.name == "sampler.energies.base"]
    assert len(lines) == 1
    assert "Banana declares no diffusion coefficient: using σ² = 1.0" in lines[0]
    assert "t_scale" in lines[0] and "model.t_scale=" in lines[0]


def test_a_declared_t_scale_is_used_and_logs_nothing(caplog):
    with caplog.at_level(logging.INFO, logger="sampler.energies.base"):
        assert resolve_t_scale(None, WideBanana()) == 2.0
    assert declared_t_scale(WideBanana()) == (2.0, True)
    assert not [r for r in caplog.records if r.name == "sampler.energies.base"]


def test_an_explicit_model_t_scale_wins_over_the_declared_one():
    assert resolve_t_scale(0.5, WideBanana()) == 0.5
    assert resolve_t_scale(3, Banana()) == 3.0


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, "5"])
def test_an_impossible_declared_t_scale_is_one_line(bad):
    energy = WideBanana()
    energy.t_scale = bad
    with pytest.raises(ConfigError, match=r"^energy._target_=my.Banana: t_scale must be a finite positive number"):
        check_energy(energy, "my.Banana")


@pytest.mark.parametrize("name", sorted(PROTOCOL_T_SCALE))
def test_builtin_energies_resolve_to_the_protocol_sigma2_from_their_config_group(tmp_path, name):
    cfg = compose_cfg([f"energy={name}"], tmp_path / "run")
    assert cfg.model.t_scale is None  # the model group defers to the energy
    assert resolve_t_scale(cfg.model.t_scale, instantiate(cfg.energy)) == PROTOCOL_T_SCALE[name]


def test_the_gaussian_test_bed_and_the_adaptive_teacher_presets_keep_sigma2_1(tmp_path):
    cfg = compose_cfg(["energy=gaussian"], tmp_path / "a")
    assert resolve_t_scale(cfg.model.t_scale, instantiate(cfg.energy)) == 1.0
    cfg = compose_cfg(["energy=gmm25", "experiment=at_onpolicy"], tmp_path / "b")
    assert cfg.model.t_scale == 1.0 and resolve_t_scale(cfg.model.t_scale, instantiate(cfg.energy)) == 1.0


def test_a_plugin_target_no_longer_inherits_the_default_groups_sigma2(tmp_path):
    cfg = compose_cfg([f"energy._target_={__name__}.Banana"], tmp_path / "run")
    assert resolve_t_scale(cfg.model.t_scale, instantiate(cfg.energy)) == 1.0  # not gmm25's 5.0


def test_every_registered_energy_declares_its_sigma2():
    for name, cls in ENERGIES.items():
        assert declared_t_scale(cls())[1], name


# ------------------------------------------------------------------------------------------------ attributes
@pytest.mark.parametrize("cls", [RingAttribute, RingBuffer])
def test_mode_centres_may_be_a_plain_attribute_or_a_buffer(cls):
    energy = cls()
    check_energy(energy, "my.Ring")
    torch.testing.assert_close(energy.mode_centres, _ring_centres())
    if cls is RingBuffer:
        assert "mode_centres" in dict(energy.named_buffers())
        torch.testing.assert_close(energy.mode_weights, torch.full((4,), 0.25, dtype=torch.float64))
    else:
        torch.testing.assert_close(energy.mode_weights, torch.tensor([0.4, 0.3, 0.2, 0.1]))


def test_unset_protocol_attributes_take_their_defaults():
    energy = Banana()
    assert (energy.log_Z, energy.mode_centres, energy.mode_weights, energy.mode_std, energy.t_scale) == (None,) * 5
    assert energy.plot_range == (-10.0, 10.0)
    energy.mode_centres = _ring_centres(5)
    assert energy.mode_weights.dtype == torch.float64 and energy.mode_weights.shape == (5,)


def test_a_failing_mode_centres_property_keeps_its_error():
    class Broken(Banana):
        @property
        def mode_centres(self):
            return self.centres_not_set

    with pytest.raises(ConfigError, match="mode_centres failed"):
        check_energy(Broken(), "my.Broken")


@pytest.mark.parametrize(
    ("wrong", "right"),
    [("mode_centers", "mode_centres"), ("plot_ranges", "plot_range"), ("logZ", "log_Z"), ("tscale", "t_scale")],
)
def test_a_misspelt_protocol_attribute_is_named_with_its_spelling(wrong, right):
    energy = Banana()
    setattr(energy, wrong, _ring_centres() if "cent" in wrong else 1.0)
    with pytest.raises(ConfigError) as err:
        check_energy(energy, "my.Banana")
    assert str(err.value) == (
        f"energy._target_=my.Banana: it defines `{wrong}`, which the platform never reads; the protocol spells it "
        f"`{right}` (rename it)"
    )


def test_a_misspelt_method_is_reported_but_a_tensor_named_like_one_is_not():
    class Sampled(Banana):
        def samples(self, n, generator=None):
            return torch.randn(n, 2, generator=generator)

    with pytest.raises(ConfigError, match="defines `samples`.*spells it `sample`"):
        check_energy(Sampled(), "my.Sampled")
    energy = Banana()
    energy.samples = torch.zeros(10, 2)  # reference points, not a sampler
    check_energy(energy, "my.Banana")


def test_unequal_mode_weights_must_match_the_centres_and_sum_to_1():
    energy = RingAttribute()
    energy.mode_weights = torch.tensor([0.5, 0.5, 0.5, 0.5])
    with pytest.raises(ConfigError, match=r"mode_weights must be non-negative and sum to 1 \(sum 2\)"):
        check_energy(energy, "my.Ring")
    energy.mode_weights = torch.tensor([0.5, 0.5])
    with pytest.raises(ConfigError, match=r"mode_weights is \[2\]; expected \[4\]"):
        check_energy(energy, "my.Ring")


# ------------------------------------------------------------------------------------------------ plots
def test_a_per_axis_plot_range_sets_each_axis_of_the_figure(tmp_path, monkeypatch):
    energy = Banana()
    energy.plot_range = ((-3.0, 3.0), (-2.0, 8.0))
    check_energy(energy, "my.Banana")
    figures = []
    monkeypatch.setattr(plots.Figure, "savefig", lambda self, *a, **k: figures.append(self))
    plots.plot_samples(energy, torch.randn(50, 2), tmp_path / "p.png", exact=torch.randn(50, 2))
    for ax in figures[0].axes:
        assert ax.get_xlim() == (-3.0, 3.0) and ax.get_ylim() == (-2.0, 8.0)
    energy.plot_range = (-4.0, 4.0)
    plots.plot_samples(energy, torch.randn(50, 2), tmp_path / "q.png")
    assert figures[1].axes[0].get_xlim() == figures[1].axes[0].get_ylim() == (-4.0, 4.0)


@pytest.mark.parametrize("bad", [(1.0, -1.0), ((0.0, 1.0),), ((0.0, 1.0), (2.0, math.nan)), "wide"])
def test_an_unusable_plot_range_is_one_line(bad):
    energy = Banana()
    energy.plot_range = bad
    with pytest.raises(ConfigError, match=r"^energy._target_=my.Banana: plot_range must be \(lo, hi\) or"):
        check_energy(energy, "my.Banana")


# ------------------------------------------------------------------------------------------------ derived
def test_sample_none_is_no_sampler():
    class NoSampler(Banana):
        sample = None

    class WithSampler(Banana):
        def sample(self, n, generator=None):
            return torch.zeros(n, 2)

    assert not NoSampler().has_sampler and not Banana().has_sampler
    assert WithSampler().has_sampler
    check_energy(NoSampler(), "my.NoSampler")  # not probed as a sampler


def test_an_energy_without_tensors_reports_where_it_was_moved():
    energy = Banana()
    assert energy.device == torch.device("cpu")
    assert energy.to("meta") is energy and energy.device == torch.device("meta")
    energy.to(torch.float64)  # a dtype change keeps the device
    assert energy.device == torch.device("meta")
    assert energy.to("cpu").device == torch.device("cpu")


def test_a_builtin_moves_with_its_buffers_and_a_parent_module():
    parent = torch.nn.Module()
    parent.energy = ENERGIES["funnel"]()  # no tensors of its own
    parent.to("meta")
    assert parent.energy.device == torch.device("meta")
    gmm = ENERGIES["gmm9"]().to("meta")
    assert gmm.device == gmm.means.device == torch.device("meta")

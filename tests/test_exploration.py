"""Exploration schedules (docs/spec.md §4): ε(step) values, and that the config group builds each one."""

import math

import pytest
from conftest import compose_cfg
from hydra.utils import instantiate

from sampler.exploration import Constant, CosineDecay, ExplorationSchedule, ExponentialDecay, LinearDecay


def test_linear_decay_matches_the_paper_formula():
    s = LinearDecay(start=0.2, horizon=5000)
    for step in (0, 1, 2500, 4999, 5000, 9000):
        expected = 0.2 * max(0.0, 1 - step / 5000)
        assert (s(step) or 0.0) == pytest.approx(expected, abs=1e-15)
    assert s(5000) is None


def test_cosine_and_exponential_decay():
    c = CosineDecay(start=0.1, horizon=100)
    assert c(0) == pytest.approx(0.1) and c(50) == pytest.approx(0.05) and c(100) is None
    e = ExponentialDecay(start=0.2, horizon=100, rate=5.0)
    assert e(0) == pytest.approx(0.2) and e(20) == pytest.approx(0.2 * math.exp(-1.0)) and e(100) is None
    assert all(e(k) > e(k + 1) for k in range(99))


def test_constant_and_none():
    assert Constant(0.3)(0) == Constant(0.3)(10**6) == 0.3
    assert Constant(0.0)(5) is None
    assert ExplorationSchedule()(0) is None


@pytest.mark.parametrize("bad", [dict(start=-0.1), dict(horizon=0)])
def test_bad_schedule_values_are_named(bad):
    with pytest.raises(ValueError, match="exploration\\."):
        LinearDecay(**{"start": 0.2, "horizon": 10, **bad})


@pytest.mark.parametrize(
    "name, cls",
    [
        ("none", ExplorationSchedule),
        ("constant", Constant),
        ("linear", LinearDecay),
        ("cosine", CosineDecay),
        ("exponential", ExponentialDecay),
    ],
)
def test_config_group_builds_each_schedule_with_half_the_run_as_horizon(name, cls):
    cfg = compose_cfg([f"exploration={name}", "trainer.max_steps=3000"], run_dir=None)
    schedule = instantiate(cfg.exploration)
    assert type(schedule) is cls
    if name in ("linear", "cosine", "exponential"):
        assert schedule.horizon == 1500
        cfg = compose_cfg([f"exploration={name}", "trainer.max_steps=3000", "exploration.horizon=10"])
        assert instantiate(cfg.exploration).horizon == 10
        one_step = compose_cfg([f"exploration={name}", "trainer.max_steps=1"], run_dir=None)
        assert instantiate(one_step.exploration).horizon == 1  # a 1-step run is not an error


def test_none_switches_off_the_schedule_of_a_preset():
    cfg = compose_cfg(["experiment=tb_expl_ls", "exploration=none"], run_dir=None)
    assert cfg.exploration.start == 0.1  # the preset's value is still composed in, and ignored
    assert instantiate(cfg.exploration)(0) is None


def test_a_constant_schedule_replaces_a_preset_that_sets_a_horizon(tiny_cfg):
    from hydra.utils import instantiate

    cfg = tiny_cfg("experiment=tb_expl", "exploration=constant", "exploration.start=0.3")
    assert cfg.exploration.horizon == 5000
    schedule = instantiate(cfg.exploration)
    assert schedule(0) == schedule(10_000) == 0.3

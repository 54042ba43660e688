"""Quality targets at short budgets, seed 0 (slow: minutes each on 2 CPU cores; `pytest -m slow`).

Each target beats the published reference code run on this machine kind at the same settings and budget
(its figures in the comments). These protect the *combination* — objective, exploration, buffers, local search,
Langevin parametrisation, log Z initialisation — not any single function.

Three of the four targets are not met by the published rows at these budgets (docs/results.md,
"Short-budget findings"): they are strict xfails, so a change that meets one shows up as a failure (XPASS) and the mark
must then go.
"""

from __future__ import annotations

import pytest

from sampler.training.run import train

pytestmark = pytest.mark.slow

COMMON = ["trainer.enable_progress_bar=false", "eval.plots=false", "seed=0"]


# The 2000-step targets for TB + Expl. + LS, shared by the 2000- and 6000-step tests.
GMM25_LS_TARGETS = {"dlogZ_rw": 0.07, "dlogZ": 1.0, "w2": 2.5, "-mode_coverage": -1.0}
MANYWELL_LS_TARGETS = {"dlogZ_rw": 5.0, "dlogZ": 40.0}


def _unmet(why: str):
    return pytest.mark.xfail(strict=True, reason=why)


@pytest.mark.parametrize(
    "experiment, energy, steps, bounds",
    [
        # ref: dlogZ 1.18, dlogZ_rw 1.02, w2 4.68 (it collapses onto the inner 9 of 25 modes)
        pytest.param(
            "tb",
            "gmm25",
            2000,
            {"dlogZ": 1.18, "dlogZ_rw": 1.02, "w2": 4.68},
            marks=_unmet(
                "on-policy TB collapses onto the inner 9 modes like the reference: dlogZ_rw = log(25/9) = 1.022"
            ),
        ),
        # ref: dlogZ_rw 0.07–0.15, dlogZ 1.48–1.91, w2 4.33–4.83 over two seeds; W2 floor 1.03–1.20
        pytest.param(
            "tb_expl_ls",
            "gmm25",
            2000,
            GMM25_LS_TARGETS,
            marks=_unmet("the published row reaches these from ~5000 steps; at 2000 the outer modes are under-filled"),
        ),
        # ref: dlogZ_rw 9.85, dlogZ 93.1 (its learned log Z only reached 80 of the true 164.7)
        pytest.param(
            "tb_expl_ls",
            "manywell",
            2000,
            MANYWELL_LS_TARGETS,
            marks=_unmet("the published row reaches these from ~5000 steps; at 2000 the wells are too wide"),
        ),
        # ref: dlogZ_rw 4.28, dlogZ 37.8 (its ε decays over 5000 steps, so it is still 0.16 at step 1000). The target
        # holds with ε decaying over the first half of the run (measured 11.5 / 1.63, 1 thread); with the preset's
        # published 5000-step horizon the run ends level with the reference (37.3 / 5.46).
        ("tb_expl_lp exploration.horizon=500", "manywell", 1000, {"dlogZ_rw": 2.0, "dlogZ": 20.0}),
    ],
)
def test_short_budget_quality_beats_the_reference(tmp_path, experiment, energy, steps, bounds):
    _check(_train(tmp_path, experiment, energy, steps), bounds)


# The 2000-step targets for the published TB + Expl. + LS row, which it reaches at 2.5-3x the budget (the
# exploration then decays over the first 3000 steps). Measured, 1 thread: gmm25 0.28 / 0.023 / 1.70 with 25/25 modes,
# many-well 31.1 / 3.26 (about 10 minutes together on 2 cores).
@pytest.mark.parametrize(
    "energy, bounds",
    [
        ("gmm25", GMM25_LS_TARGETS),
        ("manywell", MANYWELL_LS_TARGETS),
    ],
)
def test_tb_expl_ls_meets_the_2000_step_targets_at_6000_steps(tmp_path, energy, bounds):
    _check(_train(tmp_path, "tb_expl_ls", energy, 6000), bounds)


def _train(tmp_path, experiment: str, energy: str, steps: int) -> dict:
    """Train ``experiment`` (a preset name, optionally followed by overrides) on ``energy`` for ``steps``."""
    from conftest import compose_cfg

    experiment, *extra = experiment.split()
    overrides = [
        f"experiment={experiment}",
        *extra,
        f"energy={energy}",
        f"trainer.max_steps={steps}",
        f"eval.every={steps}",
        *COMMON,
    ]
    metrics, _ = train(compose_cfg(overrides, tmp_path / "run"))
    return metrics


def _check(metrics: dict, bounds: dict[str, float]) -> None:
    for key, bound in bounds.items():
        if key.startswith("-"):  # a lower bound, written as an upper bound on the negative
            assert metrics[key[1:]] >= -bound, (key[1:], metrics)
        else:
            assert metrics[key] <= bound, (key, metrics)


# The first command a user runs, `python scripts/train.py`, with no arguments: measured on 3 seeds, 25/25 modes each,
# ΔlogZ^RW 0.081 ± 0.009 (docs/results.md, "The embedded defaults").
def test_the_embedded_defaults_cover_the_gmm25_modes(tmp_path):
    from conftest import compose_cfg

    metrics, _ = train(compose_cfg(["eval.every=1000", *COMMON], tmp_path / "run"))
    assert metrics["step"] == 1000
    assert metrics["mode_coverage"] >= 24 / 25, metrics
    assert metrics["dlogZ_rw"] <= 0.1, metrics

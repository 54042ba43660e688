"""The metrics recent sampler papers report beside ΔlogZ and W2: the training budget in log-reward evaluations
(``n_energy_calls``), the EUBO − ELBO gap, mode-weight TV and the entropic mode coverage of "Beyond ELBOs", and
log-weights summed in float64. Counts are derived from what each phase evaluates, with T = 10 steps, B = 16."""

from __future__ import annotations

import csv
import json
import math
import shutil

import pytest
import torch
from conftest import TINY, compose_cfg

from sampler.energies import GMM9, GMM25
from sampler.energies.base import Energy, counting_energy_calls
from sampler.evaluation import (
    energy_calls_paused,
    entropic_mode_coverage,
    evaluate,
    log_weights_f64,
    mode_weight_tv,
)
from sampler.gfn import DiffusionGFN
from sampler.gfn.trajectories import Trajectories
from sampler.training.checkpointing import LAST
from sampler.training.run import train

T, B = 10, 16  # TINY's model.T and train.batch_size
PLAIN = ["model=pis", "exploration=none"]  # plain on-policy TB, which these counts and steps are written for
CENTRES = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0], [-10.0, 0.0]])


def at_modes(counts: list[int], between: int = 0) -> torch.Tensor:
    """``counts[m]`` points exactly at centre m, then ``between`` points at (5, 5): 7.07 from every centre."""
    pts = [CENTRES[m].expand(c, 2) for m, c in enumerate(counts)]
    return torch.cat(pts + [torch.tensor([[5.0, 5.0]]).expand(between, 2)])


# ---------------------------------------------------------------------------------------------- mode weights
def test_mode_weight_tv_of_a_sampler_that_over_weights_one_mode():
    # Five modes of weight 0.2; the sampler puts 30 % on mode 0, 20 % on modes 1–3, none on mode 4 and 10 % between
    # modes: TV = ½ (|0.3 − 0.2| + 0 + 0 + 0 + |0 − 0.2| + |0.1 − 0|) = 0.2.
    x = at_modes([30, 20, 20, 20, 0], between=10)
    tv = mode_weight_tv(x, CENTRES, std=1.0, weights=torch.full((5,), 0.2, dtype=torch.float64))
    assert tv == pytest.approx(0.2, abs=1e-12)


def test_mode_weight_tv_uses_the_true_unequal_weights():
    # True weights (0.4, 0.3, 0.1, 0.1, 0.1); sampled (0.25, 0.25, 0.25, 0.25, 0):
    # ½ (0.15 + 0.05 + 0.15 + 0.15 + 0.1) = 0.3.
    weights = torch.tensor([0.4, 0.3, 0.1, 0.1, 0.1], dtype=torch.float64)
    assert mode_weight_tv(at_modes([5, 5, 5, 5, 0]), CENTRES, 1.0, weights) == pytest.approx(0.3, abs=1e-12)
    # the exact proportions score 0, all-between scores 1
    assert mode_weight_tv(at_modes([8, 6, 2, 2, 2]), CENTRES, 1.0, weights) == pytest.approx(0.0, abs=1e-12)
    assert mode_weight_tv(at_modes([0] * 5, between=7), CENTRES, 1.0, weights) == pytest.approx(1.0, abs=1e-12)


def test_mode_weight_tv_radius_is_three_std_times_root_d():
    # (5, 5) is 7.07 from every centre: inside the radius 3·2.5·√2 = 10.6, outside 3·1.5·√2 = 6.36. Tie-broken to
    # the first nearest centre, so all of the mass lands on mode 0.
    x = at_modes([0] * 5, between=4)
    weights = torch.full((5,), 0.2, dtype=torch.float64)
    assert mode_weight_tv(x, CENTRES, std=2.5, weights=weights) == pytest.approx(0.8, abs=1e-12)
    assert mode_weight_tv(x, CENTRES, std=1.5, weights=weights) == pytest.approx(1.0, abs=1e-12)


def test_mode_weight_tv_rejects_weights_of_the_wrong_length():
    with pytest.raises(ValueError, match="mode_weights has 4 entries but there are 5 mode centres"):
        mode_weight_tv(at_modes([1] * 5), CENTRES, 1.0, torch.full((4,), 0.25))


def test_entropic_mode_coverage_is_the_base_m_entropy_of_the_mode_proportions():
    def reference(p: list[float]) -> float:
        return -sum(q * math.log(q) for q in p if q > 0) / math.log(len(p))

    assert entropic_mode_coverage(at_modes([3, 3, 3, 3, 3]), CENTRES) == pytest.approx(1.0, abs=1e-12)
    assert entropic_mode_coverage(at_modes([7, 0, 0, 0, 0]), CENTRES) == 0.0
    counts = [30, 20, 20, 20, 10]
    expected = reference([c / 100 for c in counts])
    assert entropic_mode_coverage(at_modes(counts), CENTRES) == pytest.approx(expected, abs=1e-12)
    # two of five modes, equally: log 2 / log 5
    assert entropic_mode_coverage(at_modes([4, 0, 4, 0, 0]), CENTRES) == pytest.approx(math.log(2) / math.log(5))
    # no coverage radius: far points still count for their nearest mode
    far = at_modes([0, 4, 0, 0, 0]) + torch.tensor([100.0, 0.0])
    assert entropic_mode_coverage(torch.cat([far, at_modes([4, 0, 0, 0, 0])]), CENTRES) == pytest.approx(
        math.log(2) / math.log(5)
    )
    assert entropic_mode_coverage(torch.randn(20, 2), CENTRES[:1]) == 1.0  # one mode: covered


def test_mixtures_state_equal_mode_weights():
    for energy in (GMM9(), GMM25()):
        w = energy.mode_weights
        assert w.dtype == torch.float64 and w.shape == (energy.n_modes,)
        torch.testing.assert_close(w, torch.full_like(w, 1.0 / energy.n_modes), rtol=0, atol=0)
        assert float(w.sum()) == pytest.approx(1.0, abs=1e-15)


# ------------------------------------------------------------------------------------------ float64 weights
def test_log_weights_are_summed_in_float64():
    # 100 steps of log-densities around −1000 with fractional parts: float32 sums of magnitude 1e5 are multiples of
    # 2^-7 ≈ 0.008, while the float64 sum matches math.fsum of the same float32 inputs to ~1e-10.
    g = torch.Generator().manual_seed(0)
    log_pf = (-1000.0 + torch.rand(4, 100, generator=g)).float()
    log_pb = (-1000.0 - torch.rand(4, 100, generator=g)).float()
    log_r = torch.tensor([12.345, -7.5, 0.1, 3.3])
    traj = Trajectories(torch.zeros(4, 101, 2), log_pf, log_pb, log_r)
    expected = torch.tensor(
        [math.fsum([float(log_r[b])] + log_pb[b].double().tolist() + (-log_pf[b].double()).tolist()) for b in range(4)],
        dtype=torch.float64,
    )
    got = log_weights_f64(traj)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)
    assert (traj.log_weight().double() - expected).abs().max() > 1e-4  # what the float32 sum got wrong


def test_log_weights_f64_leaves_out_padded_steps():
    log_pf = torch.tensor([[-1.0, -2.0, 99.0], [-1.0, -2.0, -3.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    traj = Trajectories(torch.zeros(2, 4, 1), log_pf, torch.zeros(2, 3), torch.tensor([0.5, 0.5]), mask=mask)
    torch.testing.assert_close(log_weights_f64(traj), torch.tensor([3.5, 6.5], dtype=torch.float64))


# ------------------------------------------------------------------------------------- energy-call counting
class Quadratic(Energy):
    """log r = −½‖x‖² with the default (autograd) log_reward_and_grad, which calls log_reward."""

    def __init__(self, dim: int = 3):
        super().__init__()
        self.dim = dim

    def log_reward(self, x):
        return -0.5 * x.pow(2).sum(-1)


class NotAnEnergy:
    dim = 2

    def log_reward(self, x):
        return -x.pow(2).sum(-1)


def test_an_energy_counts_points_only_while_counting_is_on():
    energy = Quadratic()
    energy.log_reward(torch.zeros(5, 3))
    assert energy.n_energy_calls == 0
    with counting_energy_calls(energy):
        energy.log_reward(torch.zeros(5, 3))
        energy.log_reward_and_grad(torch.zeros(7, 3))  # calls log_reward inside: still 7 points
        energy.grad_log_reward(torch.zeros(2, 3))
        energy.log_reward(torch.zeros(4, 6, 3))  # [T, B, d]: 24 points
        with energy_calls_paused(energy):
            energy.log_reward(torch.zeros(100, 3))
        energy.log_reward(torch.zeros(1, 3))
    energy.log_reward(torch.zeros(9, 3))
    assert energy.n_energy_calls == 5 + 7 + 2 + 24 + 1


def test_closed_form_gradients_count_once():
    energy = GMM25()
    with counting_energy_calls(energy):
        energy.log_reward_and_grad(torch.zeros(6, 2))
        energy.log_reward(torch.zeros(3, 2))
    assert energy.n_energy_calls == 9


def test_pausing_is_a_no_op_for_targets_that_are_not_energies():
    target = NotAnEnergy()
    with counting_energy_calls(target), energy_calls_paused(target):
        target.log_reward(torch.zeros(2, 2))
    assert not hasattr(target, "n_energy_calls")


def test_evaluate_neither_counts_nor_changes_the_count_and_reports_it():
    energy = GMM9()
    gfn = DiffusionGFN(energy, T=5, hidden_dim=8, langevin=True, t_scale=5.0)
    energy.n_energy_calls = 1234
    with counting_energy_calls(energy):
        metrics, _ = evaluate(gfn, energy, K=50, seed=1)
    assert energy.n_energy_calls == 1234 and metrics["n_energy_calls"] == 1234.0
    assert metrics["elbo_eubo_gap"] == metrics["eubo"] - metrics["log_Z_elbo"]
    assert 0.0 <= metrics["mode_weight_tv"] <= 1.0 and 0.0 <= metrics["entropic_mode_coverage"] <= 1.0


def _train_rows(run_dir) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["kind"] == "train"]


# Each training step's log-reward evaluations (points):
#   forward rollout: B terminal log r; with the Langevin parametrisation also ∇log r at s_0 … s_{T-1}: B·(T+1);
#   backward rollout from given x: B (log r(x)); with Langevin ∇log r at every state s_0 … s_T: B·(T+1);
#   MALA on B chains for n_steps iterations: B at the start + B per iteration;
#   teacher runs: 500 student rollouts for the threshold at step 0; a teacher step proposes B teacher samples
#   (their terminal log r) and scores them with B student backward rollouts; the teacher's own TB loss takes its
#   log-reward from the student's, no new evaluation.
LS = ["local_search.n_steps=3", "local_search.burn_in=1"]
COUNTS = {
    "forward_tb": (PLAIN, 5 * B),
    "lp": (["model=lp", "exploration=none"], 5 * B * (T + 1)),
    "log_Z_warm_start": ([*PLAIN, "model.log_Z_init=auto"], B + 5 * B),
    "exact_backward": ([*PLAIN, "train.phases=both_ways"], 5 * B),
    # steps 0, 2, 4 forward; 1 and 3 backward from the local-search buffer, refilled by MALA at step 1 only
    "both_ways_ls": (["experiment=tb_expl_ls", *LS], 5 * B + B * (1 + 3)),
    "both_ways_lp_ls": (["experiment=tb_expl_lp_ls", *LS], 5 * B * (T + 1) + B * (1 + 3)),
    "teacher": (["experiment=at_teacher"], 500 + 5 * B + 2 * B),
}


@pytest.mark.parametrize("case", list(COUNTS))
def test_training_counts_every_log_reward_evaluation(tiny_cfg, case):
    overrides, expected = COUNTS[case]
    metrics, objects = train(tiny_cfg(*overrides))
    assert objects["module"].n_energy_calls == expected
    assert metrics["n_energy_calls"] == float(expected)  # the final evaluation added none
    rows = _train_rows(objects["run_dir"])
    assert rows and float(rows[-1]["n_energy_calls"]) == float(expected)


def test_n_energy_calls_is_in_every_training_row_and_grows_by_the_batch(tiny_cfg):
    _, objects = train(tiny_cfg(*PLAIN, "trainer.log_every_n_steps=1"))
    rows = _train_rows(objects["run_dir"])
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]
    assert [float(r["n_energy_calls"]) for r in rows] == [float(B * s) for s in range(1, 6)]


def test_a_resumed_run_continues_the_count_bit_identically(tmp_path):
    # Ten steps with an evaluation at step 5 (not counted) and checkpoints at 5 and 10; the copy resumes from 5.
    overrides = [*TINY, *PLAIN, "trainer.max_steps=10", "eval.every=5"]
    full = tmp_path / "full"
    final, objects = train(compose_cfg(overrides, full))
    assert final["n_energy_calls"] == 10 * B
    previous = torch.load(full / "checkpoints" / "previous.ckpt", weights_only=True)
    assert int(previous["sampler_state"]["n_energy_calls"]) == 5 * B
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    (resumed / "metrics.json").unlink()
    (resumed / "checkpoints" / LAST).unlink()
    again, objects = train(compose_cfg(overrides, resumed))
    assert objects["module"].n_energy_calls == 10 * B
    assert (resumed / "metrics.json").read_text() == (full / "metrics.json").read_text()
    assert json.loads((resumed / "metrics.json").read_text())["n_energy_calls"] == 10 * B

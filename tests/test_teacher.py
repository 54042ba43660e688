"""The adaptive teacher's pure parts (docs/spec.md §7), each checked against a float64 reference written per element."""

import math

import pytest
import torch

from sampler.adaptive_teacher import (
    TeacherSchedule,
    initial_threshold,
    student_delta,
    teacher_log_reward,
    teacher_reward,
)
from sampler.gfn import Trajectories
from sampler.losses import trajectory_balance

B, T, D = 5, 7, 3


def _random_traj(seed: int = 0, scalar_log_Z: bool = False, masked: bool = False) -> Trajectories:
    g = torch.Generator().manual_seed(seed)
    log_pf = torch.randn(B, T, generator=g, dtype=torch.float64) - 1.0
    log_pb = torch.randn(B, T, generator=g, dtype=torch.float64) - 1.5
    mask = None
    if masked:
        mask = torch.arange(T)[None, :] < torch.tensor([7, 3, 1, 5, 2])[:, None]  # [B, T]
        log_pf, log_pb = log_pf.masked_fill(~mask, float("nan")), log_pb.masked_fill(~mask, float("nan"))
    return Trajectories(
        states=torch.randn(B, T + 1, D, generator=g, dtype=torch.float64),
        log_pf=log_pf,
        log_pb=log_pb,
        log_reward=3 * torch.randn(B, generator=g, dtype=torch.float64),
        log_Z=torch.randn(() if scalar_log_Z else (B,), generator=g, dtype=torch.float64),
        mask=mask,
    )


def _ref_teacher_reward(delta, log_reward, threshold, eps=1e-3, weight=20.0, below=0.0):
    """docs/spec.md §7, one sample at a time in Python floats."""
    out = []
    for d, lr in zip(delta.tolist(), log_reward.tolist(), strict=True):
        w = weight if d < 0 else 1.0
        err = w * 0.5 * d * d
        if threshold is not None and lr < threshold:
            err = below
        out.append(math.log(1.0 + eps + err))
    return torch.tensor(out, dtype=torch.float64)


# --- student residual -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scalar_log_Z", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_student_delta_is_the_tb_residual(scalar_log_Z, masked):
    # δ = log F_0 + Σ log P_F − Σ log P_B − log r, so ½δ² is the TB loss and the sign is checked per element.
    traj = _random_traj(1, scalar_log_Z=scalar_log_Z, masked=masked)
    delta = student_delta(traj)
    torch.testing.assert_close(0.5 * delta.pow(2), trajectory_balance(traj), rtol=0, atol=1e-12)
    for b in range(B):
        n = T if traj.mask is None else int(traj.mask[b].sum())
        log_Z = traj.log_Z if traj.log_Z.dim() == 0 else traj.log_Z[b]
        ref = log_Z + sum(traj.log_pf[b, k] - traj.log_pb[b, k] for k in range(n)) - traj.log_reward[b]
        torch.testing.assert_close(delta[b], ref, rtol=0, atol=1e-12)


def test_student_delta_needs_log_Z():
    traj = _random_traj(2)
    traj.log_Z = None
    with pytest.raises(ValueError, match="log Z"):
        student_delta(traj)


# --- teacher reward ---------------------------------------------------------------------------------------------


def test_teacher_reward_matches_spec_for_both_signs_and_both_sides_of_the_threshold():
    # δ < 0 (under-sampled) weighs 20×, δ ≥ 0 weighs 1×; log r below the threshold kills the error term.
    delta = torch.tensor([-2.0, -0.3, 0.0, 0.3, 2.0, -2.0, 2.0, -5.0], dtype=torch.float64)
    log_reward = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, -3.0, -3.0, 0.5], dtype=torch.float64)
    for threshold in (None, 0.0, 0.5, torch.tensor(0.0, dtype=torch.float64)):
        r_t = teacher_reward(delta, log_reward, threshold)
        ref = _ref_teacher_reward(delta, log_reward, None if threshold is None else float(threshold))
        torch.testing.assert_close(r_t, ref, rtol=0, atol=1e-14)
    # The weights and the strict threshold written out: log(1.001 + 20·½·4), log(1.001 + ½·4), log(1.001).
    r_t = teacher_reward(delta, log_reward, 0.5)
    assert r_t[0].item() == pytest.approx(math.log(1.001 + 40.0), abs=1e-14)
    assert r_t[4].item() == pytest.approx(math.log(1.001 + 2.0), abs=1e-14)
    assert r_t[5].item() == r_t[6].item() == pytest.approx(math.log(1.001), abs=1e-14)
    assert r_t[7].item() == pytest.approx(math.log(1.001 + 250.0), abs=1e-14)  # log r == threshold: kept


def test_teacher_reward_options_eps_weight_and_below_threshold():
    g = torch.Generator().manual_seed(3)
    delta = 3 * torch.randn(64, generator=g, dtype=torch.float64)
    log_reward = torch.randn(64, generator=g, dtype=torch.float64)
    kw = dict(eps=0.05, weight=7.0, below=1e-12)
    r_t = teacher_reward(delta, log_reward, 0.2, eps=0.05, weight=7.0, below_threshold=1e-12)
    torch.testing.assert_close(r_t, _ref_teacher_reward(delta, log_reward, 0.2, **kw), rtol=0, atol=1e-14)
    # A per-sample threshold tensor works like a scalar one.
    torch.testing.assert_close(
        teacher_reward(delta, log_reward, torch.full((64,), 0.2, dtype=torch.float64)),
        teacher_reward(delta, log_reward, 0.2),
    )


def test_teacher_reward_is_positive_and_monotone_in_abs_delta_for_a_fixed_sign():
    mags = torch.linspace(0.0, 50.0, 201, dtype=torch.float64)
    log_reward = torch.zeros_like(mags)
    for sign in (-1.0, 1.0):
        r_t = teacher_reward(sign * mags, log_reward, threshold=-1.0)
        assert (r_t > 0).all()
        assert (r_t.diff() > 0).all()
    # Under-sampling costs more than over-sampling by the same amount.
    assert (teacher_reward(-mags[1:], log_reward[1:], None) > teacher_reward(mags[1:], log_reward[1:], None)).all()
    # Everything below the threshold still gets R_T = log(1 + ε) > 0.
    r_low = teacher_reward(mags - 25, torch.full_like(mags, -10.0), threshold=0.0)
    assert (r_low > 0).all()
    torch.testing.assert_close(r_low, torch.full_like(mags, math.log1p(1e-3)))


def test_teacher_reward_is_detached():
    delta = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert not teacher_reward(delta, torch.zeros(4, dtype=torch.float64), None).requires_grad


@pytest.mark.parametrize("kw", [dict(eps=0.0), dict(weight=-1.0), dict(below_threshold=-0.1)])
def test_bad_teacher_reward_options_are_named(kw):
    with pytest.raises(ValueError, match="teacher\\."):
        teacher_reward(torch.zeros(2), torch.zeros(2), None, **kw)


def test_teacher_log_reward_is_log_r_t_plus_alpha_log_r():
    g = torch.Generator().manual_seed(4)
    delta = 2 * torch.randn(16, generator=g, dtype=torch.float64)
    log_reward = 5 * torch.randn(16, generator=g, dtype=torch.float64)
    r_t = teacher_reward(delta, log_reward, 0.0)
    for alpha in (0.0, 0.5, 1.0):
        out = teacher_log_reward(r_t, log_reward, alpha)
        ref = torch.tensor(
            [math.log(a) + alpha * b for a, b in zip(r_t.tolist(), log_reward.tolist(), strict=True)],
            dtype=torch.float64,
        )
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-13)
    torch.testing.assert_close(teacher_log_reward(r_t, log_reward), r_t.log() + 0.5 * log_reward)  # default α


# --- threshold --------------------------------------------------------------------------------------------------


def test_initial_threshold_is_the_0_9_quantile():
    log_reward = torch.arange(11, dtype=torch.float64)  # 0..10: the 0.9-quantile is 9
    assert initial_threshold(log_reward) == pytest.approx(9.0)
    g = torch.Generator().manual_seed(5)
    log_reward = torch.randn(500, generator=g)
    t = initial_threshold(log_reward)
    assert isinstance(t, float)
    assert t == pytest.approx(float(torch.quantile(log_reward.double(), 0.9)))
    assert (log_reward < t).double().mean().item() == pytest.approx(0.9, abs=2 / 500)
    assert initial_threshold(log_reward, 0.5) == pytest.approx(float(log_reward.double().median()), abs=0.05)


@pytest.mark.parametrize(
    "log_reward, quantile", [(torch.zeros(0), 0.9), (torch.tensor([0.0, float("nan")]), 0.9), (torch.zeros(3), 1.5)]
)
def test_bad_threshold_inputs_are_named(log_reward, quantile):
    with pytest.raises(ValueError):
        initial_threshold(log_reward, quantile)


# --- schedule ---------------------------------------------------------------------------------------------------


def test_schedule_is_half_forward_a_quarter_teacher_a_quarter_replay():
    phase = TeacherSchedule()
    phases = [phase(step) for step in range(100)]
    assert {k: phases.count(k) for k in TeacherSchedule.KINDS} == {"forward": 50, "teacher": 25, "replay": 25}
    assert phases[:4] == ["forward", "teacher", "forward", "replay"]
    assert all(phases[i] == phases[i % 4] for i in range(100))  # period 4
    assert all(p == "forward" for p in phases[::2])  # every even step is on-policy
    assert set(phases) == set(TeacherSchedule.KINDS)


def test_schedule_rejects_negative_steps():
    with pytest.raises(ValueError, match="step"):
        TeacherSchedule()(-1)

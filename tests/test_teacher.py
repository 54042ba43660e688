"""The adaptive teacher (docs/spec.md §7): its pure parts, each checked against a float64 reference written per
element, and the two choices of the Adaptive Teachers diffusion code that are options here (the teacher and the PER
buffer leave out samples below the log-reward threshold; the teacher clips only its time embedding's gradient),
which the ``experiment=at_*`` presets select."""

import copy
import math

import pytest
import torch
from conftest import compose_cfg
from omegaconf import OmegaConf, open_dict

from sampler.adaptive_teacher import (
    AdaptiveTeacher,
    TeacherSchedule,
    initial_threshold,
    student_delta,
    teacher_log_reward,
    teacher_reward,
)
from sampler.buffers import PERBuffer
from sampler.energies import GMM9
from sampler.gfn import DiffusionGFN, Trajectories
from sampler.losses import trajectory_balance
from sampler.recipe import OffPolicy
from sampler.training.config_check import ConfigError
from sampler.training.legacy import upgrade_config
from sampler.training.module import SamplerModule

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


# --- options: the Adaptive Teachers code's choices --------------------------------------------------------------

TEACHER_PRESETS = ("at_onpolicy", "at_per", "at_teacher")


def _gfn(seed: int, zero_init: bool = True) -> DiffusionGFN:
    torch.manual_seed(seed)
    return DiffusionGFN(GMM9(), T=4, hidden_dim=8, t_scale=5.0, learned_variance=False, zero_init=zero_init)


def _student_batch(seed: int = 1, n: int = 32) -> tuple[DiffusionGFN, Trajectories, float]:
    """A student, one of its forward batches and a threshold (the batch's median log r: half the batch below)."""
    student = _gfn(0)
    traj = student.rollout_forward(n, generator=torch.Generator().manual_seed(seed)).detach()
    return student, traj, float(traj.log_reward.median())


def _teacher_step(teacher: AdaptiveTeacher, traj: Trajectories, threshold: float):
    """One teacher update; returns (what its TB loss was computed on, or {} when it was not computed; the loss)."""
    seen, loss_fn = {}, teacher.loss

    def spy(x, r_t, log_r, generator):
        seen.update(x=x, r_t=r_t, log_r=log_r)
        return loss_fn(x, r_t, log_r, generator)

    teacher.loss = spy
    opt = torch.optim.Adam(teacher.param_groups(1e-3, 1e-1))
    return seen, teacher.update(traj, threshold, opt, torch.Generator().manual_seed(2))


@pytest.mark.parametrize("drop", [False, True])
def test_drop_below_threshold_keeps_those_samples_out_of_the_teachers_batch(drop):
    _, traj, threshold = _student_batch()
    below = traj.log_reward < threshold
    assert 0 < int(below.sum()) < len(below)
    teacher = AdaptiveTeacher(_gfn(3), drop_below_threshold=drop)
    seen, loss = _teacher_step(teacher, traj, threshold)
    r_t = teacher.reward(traj, threshold)
    if drop:  # only the samples at or above the threshold, with their own R_T and log r
        torch.testing.assert_close(seen["x"], traj.terminal_states[~below], rtol=0, atol=0)
        torch.testing.assert_close(seen["r_t"], r_t[~below], rtol=0, atol=0)
        assert (seen["log_r"] >= threshold).all()
    else:  # every sample; those below the threshold with R_T = log(1 + ε_T)
        torch.testing.assert_close(seen["x"], traj.terminal_states, rtol=0, atol=0)
        torch.testing.assert_close(seen["r_t"][below], torch.full_like(r_t[below], math.log1p(1e-3)))
    assert torch.isfinite(loss) and loss > 0


def test_a_teacher_batch_entirely_below_the_threshold_updates_nothing():
    _, traj, _ = _student_batch()
    teacher = AdaptiveTeacher(_gfn(3, zero_init=False), drop_below_threshold=True)
    before = copy.deepcopy(teacher.gfn.state_dict())
    seen, loss = _teacher_step(teacher, traj, float(traj.log_reward.max()) + 1.0)
    assert seen == {} and loss.item() == 0.0
    assert all(torch.equal(before[k], v) for k, v in teacher.gfn.state_dict().items())


@pytest.mark.parametrize("drop", [False, True])
def test_the_per_buffer_drops_below_threshold_states_after_its_first_batch(drop):
    student, first, threshold = _student_batch(seed=1)
    second = student.rollout_forward(32, generator=torch.Generator().manual_seed(5)).detach()
    below = second.log_reward < threshold
    assert 0 < int(below.sum()) < 32 and bool((first.log_reward < threshold).any())
    offpolicy = OffPolicy(PERBuffer(1000, 2, drop_below_threshold=drop), source="buffer")
    offpolicy.threshold = torch.tensor(threshold, dtype=torch.float64)
    gen = torch.Generator().manual_seed(6)
    offpolicy.store(first, student, gen)
    offpolicy.store(second, student, gen)
    buf = offpolicy.buffer
    x = buf.state_dict()["x"][: len(buf)]
    torch.testing.assert_close(x[:32], first.terminal_states, rtol=0, atol=0)  # the first batch seeds it whole
    expected = second.terminal_states[~below] if drop else second.terminal_states
    torch.testing.assert_close(x[32:], expected, rtol=0, atol=0)


def test_a_preset_run_keeps_below_threshold_samples_out_of_the_buffer_and_the_teacher(tiny_cfg):
    # experiment=at_per through the platform: after the first forward batch, every stored state reaches the threshold
    module = SamplerModule(tiny_cfg("experiment=at_per", "energy=gmm9"))
    opts = module.configure_optimizers()
    opt = (opts[0] if isinstance(opts, tuple) else opts)[0]
    for step in range(8):
        module.train_step(step, opt)
    buf, threshold = module.recipe.offpolicy.buffer, float(module.recipe.offpolicy.threshold)
    x = buf.state_dict()["x"][: len(buf)]
    assert buf.drop_below_threshold and 16 < len(buf) < 4 * 16
    assert (module.energy.log_reward(x[16:]) >= threshold).all()
    teaching = SamplerModule(tiny_cfg("experiment=at_teacher", "energy=gmm9")).teaching
    assert teaching.drop_below_threshold and teaching.grad_clip_params == "time_embedding"


@pytest.mark.parametrize("scope", ["all", "time_embedding"])
def test_grad_clip_params_bounds_only_the_chosen_parameters(scope):
    # The same update with and without the clip (same network, same noise): the chosen parameters' gradient is
    # scaled to norm grad_clip, every other one is left exactly as it was.
    _, traj, threshold = _student_batch()
    network, clip, grads = _gfn(3, zero_init=False), 1e-3, {}
    for max_norm in (None, clip):
        teacher = AdaptiveTeacher(copy.deepcopy(network), grad_clip=max_norm, grad_clip_params=scope)
        opt = torch.optim.SGD(teacher.gfn.parameters(), lr=0.0)  # keeps the gradients and the parameters
        teacher.update(traj, threshold, opt, torch.Generator().manual_seed(2))
        grads[max_norm] = {n: p.grad.clone() for n, p in teacher.gfn.named_parameters() if p.grad is not None}
    raw, clipped = grads[None], grads[clip]
    time = {n for n in raw if n.startswith(("policy.time_features.", "policy.time_net."))}
    assert time and set(raw) - time  # both kinds have a gradient
    scoped = time if scope == "time_embedding" else set(raw)
    norm = torch.linalg.vector_norm(torch.stack([raw[n].norm() for n in scoped]))
    assert norm > 10 * clip  # the clip acts
    for name, g in raw.items():
        expected = g * (clip / (norm + 1e-6)) if name in scoped else g  # clip_grad_norm_'s factor
        torch.testing.assert_close(clipped[name], expected, rtol=1e-5, atol=0, msg=name)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: AdaptiveTeacher(_gfn(0), grad_clip_params="first"), "teacher.grad_clip_params must be one of all, "),
        (lambda: AdaptiveTeacher(_gfn(0), drop_below_threshold="yes"), "teacher.drop_below_threshold must be true or"),
        (
            lambda: AdaptiveTeacher(torch.nn.Linear(2, 2), grad_clip_params="time_embedding"),
            "needs a teacher policy with a time embedding .*Linear has none.*use teacher.grad_clip_params=all",
        ),
        (lambda: PERBuffer(10, 2, drop_below_threshold=1), "buffer.drop_below_threshold must be true or false"),
    ],
)
def test_bad_protocol_options_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["experiment=at_teacher", "teacher.grad_clip_params=first"], "teacher.grad_clip_params must be one of"),
        (["experiment=at_per", "buffer.drop_below_threshold=2"], "buffer.drop_below_threshold must be true or"),
    ],
)
def test_bad_protocol_options_in_a_config_are_one_line_errors(tiny_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        SamplerModule(tiny_cfg(*overrides, "energy=gmm9"))
    assert "\n" not in str(err.value)


def test_the_adaptive_teachers_presets_make_the_published_choices():
    for name in TEACHER_PRESETS:
        cfg = compose_cfg([f"experiment={name}"])
        m = cfg.model
        assert (m.arch, m.hidden_dim, m.num_layers, m.clipping, m.learned_variance) == ("mlp", 256, 3, False, False)
        assert cfg.train.grad_clip is None
        assert cfg.buffer.get("drop_below_threshold") == (None if name == "at_onpolicy" else True)
    teacher = compose_cfg(["experiment=at_teacher"]).teacher
    assert teacher.drop_below_threshold and teacher.grad_clip_params == "time_embedding" and teacher.grad_clip == 0.1
    # ... and the other choices stay one override away, and the defaults outside the presets
    cfg = compose_cfg(["experiment=at_teacher", "model=pis", "teacher.grad_clip_params=all"])
    assert cfg.model.arch == "pis" and cfg.teacher.grad_clip_params == "all"
    cfg = compose_cfg(["teacher=adaptive", "buffer=per"])
    assert not cfg.teacher.drop_below_threshold and cfg.teacher.grad_clip_params == "all"
    assert not cfg.buffer.drop_below_threshold and cfg.model.arch == "pis"


def test_a_saved_config_without_the_options_builds_the_earlier_behaviour(tiny_cfg):
    # Configs saved before these options existed lack the keys: the classes' defaults are what those runs did.
    cfg = tiny_cfg("experiment=at_teacher", "energy=gmm9")
    with open_dict(cfg):
        for key in ("drop_below_threshold", "grad_clip_params"):
            del cfg.teacher[key]
        del cfg.buffer.drop_below_threshold
    module = SamplerModule(upgrade_config(OmegaConf.create(OmegaConf.to_container(cfg))))
    assert not module.teaching.drop_below_threshold and module.teaching.grad_clip_params == "all"
    assert not module.recipe.offpolicy.buffer.drop_below_threshold

"""The objectives of docs/spec.md §3, each checked against a float64 reference written as explicit Python loops.

Two kinds of input: random float64 ``Trajectories`` (full length, and padded with a mask as a discrete sampler
would send them), and real trajectories of :class:`DiffusionGFN`, whose log P_F, log P_B and state flows are
recomputed here one step at a time from the formulas of docs/spec.md §2 before the losses are compared.
"""

import copy
import dataclasses
import math

import pytest
import torch

from sampler.energies import ENERGIES
from sampler.gfn import DiffusionGFN, Trajectories
from sampler.losses import (
    ALIASES,
    LOSSES,
    detailed_balance,
    get_loss,
    maximum_likelihood,
    pis_kl,
    subtrajectory_balance,
    trajectory_balance,
    vargrad,
)

B, T, D = 4, 6, 3
LENGTHS = [6, 3, 1, 4]  # variable lengths of the masked (discrete-style) batch; padding after each


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


# --- inputs -----------------------------------------------------------------------------------------------------


def _random_traj(seed: int = 0, masked: bool = False, scalar_log_Z: bool = False, pad: float = float("nan")):
    """Random float64 trajectories; padded entries are ``pad`` (NaN: any leak through the mask shows)."""
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(B, T + 1, D, generator=g, dtype=torch.float64)
    log_pf = torch.randn(B, T, generator=g, dtype=torch.float64) - 1.0
    log_pb = torch.randn(B, T, generator=g, dtype=torch.float64) - 1.5
    log_reward = 3 * torch.randn(B, generator=g, dtype=torch.float64)
    log_flow = 2 * torch.randn(B, T + 1, generator=g, dtype=torch.float64)
    log_flow[:, -1] = log_reward
    log_Z = torch.randn((), generator=g, dtype=torch.float64) if scalar_log_Z else log_flow[:, 0].clone()
    mask = None
    if masked:
        lengths = torch.tensor(LENGTHS)
        mask = torch.arange(T)[None, :] < lengths[:, None]  # [B, T]
        log_pf = log_pf.masked_fill(~mask, pad)
        log_pb = log_pb.masked_fill(~mask, pad)
        after = torch.arange(T + 1)[None, :] > lengths[:, None]  # strictly after the terminal state
        log_flow = log_flow.masked_fill(after, pad)
        # log_flow at the terminal index is whatever the flow network said there, *not* the log-reward:
        # objectives must use log r(x) for the terminal state themselves.
    return Trajectories(
        states=states, log_pf=log_pf, log_pb=log_pb, log_reward=log_reward, log_Z=log_Z, log_flow=log_flow, mask=mask
    )


def _with_grad(traj: Trajectories, tie_terminal: bool) -> tuple[Trajectories, list[torch.Tensor]]:
    """A copy built from leaves that require gradients, and those leaves.

    With ``tie_terminal`` the terminal entry of ``log_flow`` (index ``mask.sum(1)``, or T) *is* the log-reward
    leaf, as the convention says it holds the log-reward.
    """
    leaves = {
        name: getattr(traj, name).detach().clone().requires_grad_(True)
        for name in ("log_pf", "log_pb", "log_reward", "log_Z", "log_flow")
    }
    log_flow = leaves["log_flow"]
    if tie_terminal:
        last = torch.full((traj.batch_size,), traj.n_steps) if traj.mask is None else traj.mask.sum(1)
        log_flow = log_flow.scatter(1, last[:, None], leaves["log_reward"][:, None])
    built = Trajectories(
        states=traj.states,
        log_pf=leaves["log_pf"],
        log_pb=leaves["log_pb"],
        log_reward=leaves["log_reward"],
        log_Z=leaves["log_Z"],
        log_flow=log_flow,
        mask=traj.mask,
    )
    return built, list(leaves.values())


# --- float64 naive references -------------------------------------------------------------------------------------


def _length(traj: Trajectories, b: int) -> int:
    return traj.n_steps if traj.mask is None else int(traj.mask[b].sum())


def _log_Z(traj: Trajectories, b: int) -> torch.Tensor:
    return traj.log_Z if traj.log_Z.dim() == 0 else traj.log_Z[b]


def _flow(traj: Trajectories, b: int, i: int) -> torch.Tensor:
    """log F(s_i), with the terminal state's flow being its log-reward."""
    return traj.log_reward[b] if i == _length(traj, b) else traj.log_flow[b, i]


def _delta_without_Z(traj: Trajectories, b: int) -> torch.Tensor:
    delta = -traj.log_reward[b]
    for k in range(_length(traj, b)):
        delta = delta + traj.log_pf[b, k] - traj.log_pb[b, k]
    return delta


def ref_tb(traj: Trajectories) -> torch.Tensor:
    return torch.stack([0.5 * (_log_Z(traj, b) + _delta_without_Z(traj, b)) ** 2 for b in range(traj.batch_size)])


def ref_vargrad(traj: Trajectories) -> torch.Tensor:
    deltas = [_delta_without_Z(traj, b) for b in range(traj.batch_size)]
    mean = sum(deltas) / len(deltas)
    return torch.stack([0.5 * (delta - mean) ** 2 for delta in deltas])


def ref_db(traj: Trajectories) -> torch.Tensor:
    out = []
    for b in range(traj.batch_size):
        total = torch.zeros((), dtype=torch.float64)
        for i in range(_length(traj, b)):
            res = _flow(traj, b, i) + traj.log_pf[b, i] - traj.log_pb[b, i] - _flow(traj, b, i + 1)
            total = total + 0.5 * res**2
        out.append(total)
    return torch.stack(out)


def ref_subtb(traj: Trajectories, lam: float = 2.0) -> torch.Tensor:
    out = []
    for b in range(traj.batch_size):
        n = _length(traj, b)
        pairs = [(i, j) for i in range(n + 1) for j in range(i + 1, n + 1)]
        norm = sum(lam ** (j - i) for i, j in pairs)
        total = torch.zeros((), dtype=torch.float64)
        for i, j in pairs:
            res = _flow(traj, b, i) - _flow(traj, b, j)
            for k in range(i, j):
                res = res + traj.log_pf[b, k] - traj.log_pb[b, k]
            total = total + lam ** (j - i) / norm * res**2
        out.append(total)
    return torch.stack(out)


def ref_pis(traj: Trajectories) -> torch.Tensor:
    d = traj.states.shape[-1]
    return torch.stack([_delta_without_Z(traj, b) / d for b in range(traj.batch_size)])


def ref_mle(traj: Trajectories) -> torch.Tensor:
    out = []
    for b in range(traj.batch_size):
        total = torch.zeros((), dtype=torch.float64)
        for k in range(_length(traj, b)):
            total = total - traj.log_pf[b, k]
        out.append(total)
    return torch.stack(out)


CASES = {  # name: (package function, float64 reference)
    "tb": (trajectory_balance, ref_tb),
    "vargrad": (vargrad, ref_vargrad),
    "db": (detailed_balance, ref_db),
    "subtb": (subtrajectory_balance, ref_subtb),
    "pis": (pis_kl, ref_pis),
    "mle": (maximum_likelihood, ref_mle),
}
REFS = {name: ref for name, (_, ref) in CASES.items()} | {"fl_subtb": ref_subtb}


def _assert_loss_and_grad_match(fn, ref, traj: Trajectories, tie_terminal: bool | None = None):
    """Values and the gradients of Σ_b loss_b with respect to every input agree with the reference."""
    tie = traj.mask is None if tie_terminal is None else tie_terminal
    (a, leaves_a), (b, leaves_b) = _with_grad(traj, tie), _with_grad(traj, tie)
    got, want = fn(a), ref(b)
    assert got.shape == (traj.batch_size,) and got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    grads_got = torch.autograd.grad(got.sum(), leaves_a, allow_unused=True)
    grads_want = torch.autograd.grad(want.sum(), leaves_b, allow_unused=True)
    for g_got, g_want, x in zip(grads_got, grads_want, leaves_a):
        g_got = torch.zeros_like(x) if g_got is None else g_got
        g_want = torch.zeros_like(x) if g_want is None else g_want
        assert torch.isfinite(g_got).all(), "a padded (NaN) entry leaked into the gradient"
        torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-12)


# --- random trajectories --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_equals_the_naive_float64_reference(name, seed):
    fn, ref = CASES[name]
    _assert_loss_and_grad_match(fn, ref, _random_traj(seed))


def test_tb_accepts_a_scalar_log_Z():
    _assert_loss_and_grad_match(trajectory_balance, ref_tb, _random_traj(3, scalar_log_Z=True))


@pytest.mark.parametrize("lam", [0.5, 1.0, 2.0, 3.7])
def test_subtb_equals_the_reference_for_every_lambda(lam):
    _assert_loss_and_grad_match(
        lambda t: subtrajectory_balance(t, lam=lam), lambda t: ref_subtb(t, lam), _random_traj(4)
    )


@pytest.mark.parametrize("name", ["tb", "vargrad", "subtb", "pis", "mle"])
def test_masked_loss_ignores_padding_and_uses_the_reward_at_the_true_end(name):
    # Variable-length trajectories, NaN after the end; for SubTB the terminal flow is log r at index mask.sum(1)
    # (the stored log_flow there differs from it) and valid pairs are i < j ≤ length.
    fn, ref = CASES[name]
    traj = _random_traj(5, masked=True)
    _assert_loss_and_grad_match(fn, ref, traj)


def test_masked_db_with_the_reward_stored_at_the_terminal_index():
    traj = _random_traj(6, masked=True, pad=1e3)
    lengths = traj.mask.sum(1)
    traj.log_flow = traj.log_flow.scatter(1, lengths[:, None], traj.log_reward[:, None])
    _assert_loss_and_grad_match(detailed_balance, ref_db, traj, tie_terminal=True)


def test_masked_db_uses_the_log_reward_as_terminal_flow_like_subtb():
    traj = _random_traj(6, masked=True, pad=1e3)
    _assert_loss_and_grad_match(detailed_balance, ref_db, traj)


def test_masked_db_gradient_ignores_nan_padding():
    traj = _random_traj(6, masked=True)
    lengths = traj.mask.sum(1)
    traj.log_flow = traj.log_flow.scatter(1, lengths[:, None], traj.log_reward[:, None])
    _assert_loss_and_grad_match(detailed_balance, ref_db, traj, tie_terminal=True)


def test_masked_subtb_of_a_one_step_trajectory_is_its_single_residual():
    traj = _random_traj(7, masked=True)
    b = LENGTHS.index(1)
    res = traj.log_flow[b, 0] + traj.log_pf[b, 0] - traj.log_pb[b, 0] - traj.log_reward[b]
    torch.testing.assert_close(subtrajectory_balance(traj)[b], res**2, rtol=1e-12, atol=1e-12)


def test_vargrad_keeps_the_gradient_through_the_batch_estimate_of_log_Z():
    # Not detached: loss_0 depends on δ_1 through the batch mean, with ∂loss_0/∂δ_1 = -(δ_0 - mean δ)/B.
    traj, _ = _with_grad(_random_traj(8), tie_terminal=True)
    loss = vargrad(traj)
    (grad,) = torch.autograd.grad(loss[0], traj.log_pf)
    delta = (traj.sum_log_pf() - traj.sum_log_pb() - traj.log_reward).detach()
    expected = -(delta[0] - delta.mean()) / B
    torch.testing.assert_close(grad[1], torch.full((T,), float(expected), dtype=torch.float64))
    assert abs(float(expected)) > 1e-3


def test_vargrad_is_tb_with_the_optimal_constant_log_Z():
    traj = _random_traj(9)
    delta = traj.sum_log_pf() - traj.sum_log_pb() - traj.log_reward
    traj.log_Z = -delta.mean()
    torch.testing.assert_close(vargrad(traj), trajectory_balance(traj))


def test_lambda_is_honoured():
    traj = _random_traj(10)
    l1, l2 = subtrajectory_balance(traj, lam=1.0), subtrajectory_balance(traj, lam=2.0)
    assert (l1 - l2).abs().min() > 1e-3
    torch.testing.assert_close(get_loss("subtb", lam=1.0)(traj), l1)
    torch.testing.assert_close(get_loss("subtb")(traj), l2)
    torch.testing.assert_close(get_loss("fl_subtb", lam=1.0)(traj), l1)
    torch.testing.assert_close(l1, ref_subtb(traj, 1.0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("masked", [False, True])
def test_subtb_with_a_huge_lambda_weights_only_the_full_trajectory(masked):
    # All weight on the pair (0, length): the TB residual with log Z := log_flow[:, 0], squared without the ½.
    traj = _random_traj(11, masked=masked)
    traj.log_Z = traj.log_flow[:, 0]
    torch.testing.assert_close(subtrajectory_balance(traj, lam=1e9), 2 * trajectory_balance(traj), rtol=1e-7, atol=1e-9)


def test_subtb_with_a_tiny_lambda_is_the_mean_of_one_step_residuals():
    # All weight on the T pairs (i, i+1), uniformly: (1/T)·Σ_i res_i² = (2/T)·DB.
    traj = _random_traj(12)
    torch.testing.assert_close(
        subtrajectory_balance(traj, lam=1e-9), 2 / T * detailed_balance(traj), rtol=1e-7, atol=1e-9
    )


@pytest.mark.parametrize(
    ("fn", "what"), [(trajectory_balance, "log Z"), (detailed_balance, "log F"), (subtrajectory_balance, "log F")]
)
def test_missing_flows_raise_naming_what_is_needed(fn, what):
    traj = _random_traj(13)
    traj.log_Z, traj.log_flow = None, None
    with pytest.raises(ValueError, match=what):
        fn(traj)


# --- registry ---------------------------------------------------------------------------------------------------------


def test_registry_lists_every_objective_with_its_requirements():
    assert list(LOSSES) == ["tb", "vargrad", "db", "subtb", "fl_subtb", "pis", "mle"]
    assert ALIASES == {"tb_avg": "vargrad"}
    assert LOSSES["subtb"].fn is subtrajectory_balance and LOSSES["fl_subtb"].fn is subtrajectory_balance
    assert LOSSES["fl_subtb"].flows == ("forward_looking",)
    assert "scalar" not in LOSSES["db"].flows and "scalar" not in LOSSES["subtb"].flows
    assert LOSSES["pis"].reparam and not LOSSES["pis"].backward
    assert not LOSSES["mle"].forward and LOSSES["mle"].backward
    assert not any(LOSSES[n].reparam for n in LOSSES if n != "pis")


@pytest.mark.parametrize("name", list(LOSSES) + list(ALIASES))
def test_get_loss_returns_the_named_objective(name):
    traj = _random_traj(14)
    ref = REFS[ALIASES.get(name, name)]
    torch.testing.assert_close(get_loss(name)(traj), ref(traj), rtol=1e-12, atol=1e-12)


def test_tb_avg_is_an_alias_of_vargrad():
    assert get_loss("tb_avg") is vargrad


def test_unknown_loss_name_raises_naming_the_allowed_values():
    with pytest.raises(ValueError) as info:
        get_loss("tbb")
    msg = str(info.value)
    assert "tbb" in msg
    for allowed in ["tb", "vargrad", "db", "subtb", "fl_subtb", "pis", "mle", "tb_avg"]:
        assert allowed in msg.replace(",", " ").split()


# --- real diffusion trajectories -------------------------------------------------------------------------------------

GFN_T, GFN_B, SIGMA2 = 8, 5, 2.0


def _log_normal(x: torch.Tensor, mean: torch.Tensor, var) -> float:
    """log N(x; mean, diag(var)) for one point, summed over the coordinates in a Python loop."""
    var = torch.as_tensor(var, dtype=torch.float64).expand_as(x)
    total = 0.0
    for k in range(x.shape[0]):
        v = float(var[k])
        total += -0.5 * (float(x[k]) - float(mean[k])) ** 2 / v - 0.5 * math.log(2 * math.pi * v)
    return total


def _make_gfn(flow: str, langevin: bool, learn_pb: bool = False, seed: int = 0) -> DiffusionGFN:
    torch.manual_seed(seed)
    gfn = DiffusionGFN(
        ENERGIES["gmm9"](),
        T=GFN_T,
        t_scale=SIGMA2,
        hidden_dim=16,
        zero_init=False,
        learned_variance=True,
        langevin=langevin,
        flow=flow,
        learn_pb=learn_pb,
    )
    with torch.no_grad():  # make g(t) and the P_B corrections non-trivial (both start near-constant)
        if langevin:
            torch.nn.init.normal_(gfn.lgv_scale.net[-1].weight, std=0.5)
        if learn_pb:
            torch.nn.init.normal_(gfn.pb_net.out.weight, std=1.0)
            torch.nn.init.normal_(gfn.pb_net.out.bias, std=1.0)
    return gfn


def _rollout(gfn: DiffusionGFN, direction: str) -> Trajectories:
    g = torch.Generator().manual_seed(123)
    if direction == "forward":
        return gfn.rollout_forward(GFN_B, exploration_std=0.3, generator=g)
    return gfn.rollout_backward(gfn.energy.sample(GFN_B, generator=g), generator=g)


def _reference_quantities(gfn: DiffusionGFN, states: torch.Tensor):
    """float64 log P_F, log P_B ``[B, T]`` and log-flows ``[B, T+1]`` recomputed one state and step at a time."""
    net = copy.deepcopy(gfn).double()
    energy = net.energy.double()
    S = states.detach().double()
    n, T, d, dt = S.shape[0], gfn.T, gfn.dim, 1.0 / gfn.T
    log_pf = torch.zeros(n, T, dtype=torch.float64)
    log_pb = torch.zeros(n, T, dtype=torch.float64)
    log_flow = torch.zeros(n, T + 1, dtype=torch.float64) if gfn.flow_type != "scalar" else None
    with torch.no_grad():
        for b in range(n):
            for i in range(T):
                s, s_next = S[b, i][None], S[b, i + 1]  # [1, d], [d]
                t = torch.tensor([i * dt], dtype=torch.float64)
                # P_F(s_{i+1} | s_i) = N(s_i + dt·μ, dt·σ²·exp(v))
                out = net.policy(s, net.policy.embed_time(t))[0].clamp(-gfn.out_clip, gfn.out_clip)
                mu = out[:d]
                if gfn.langevin:
                    grad = energy.log_reward_and_grad(s)[1][0].clamp(-gfn.lgv_clip, gfn.lgv_clip)
                    mu = mu + net.lgv_scale(t)[0] * grad
                v = gfn.log_var_range * torch.tanh(out[d:])
                log_pf[b, i] = _log_normal(s_next, s[0] + dt * mu, dt * gfn.t_scale * torch.exp(v))
                # P_B(s_i | s_{i+1}): Brownian bridge pinned at 0; the step back to s_0 is deterministic
                if i >= 1:
                    pull, var = s_next / (i + 1), gfn.t_scale * dt * i / (i + 1)
                    if gfn.learn_pb:
                        t_next = torch.tensor([(i + 1) * dt], dtype=torch.float64)
                        ab = net.pb_net(s_next[None], net.pb_net.embed_time(t_next))[0]
                        pull = pull * (1 + gfn.pb_scale_range * torch.tanh(ab[:d]))
                        var = var * (1 + gfn.pb_scale_range * torch.tanh(ab[d:]))
                    log_pb[b, i] = _log_normal(S[b, i], s_next - pull, var)
                # log F_i = F_θ(s_i, t_i) [+ (1-t_i)·log N(s_i; 0, σ²·max(1,i)·dt) + t_i·log r(s_i)]
                if log_flow is not None:
                    F = net.flow_net(s, net.flow_net.embed_time(t))[0, 0]
                    if gfn.flow_type == "forward_looking":
                        ref_var = gfn.t_scale * max(1, i) * dt
                        F = F + (1 - i * dt) * _log_normal(s[0], torch.zeros(d), ref_var)
                        F = F + i * dt * energy.log_reward(s)[0]
                    log_flow[b, i] = F
            if log_flow is not None:
                log_flow[b, T] = energy.log_reward(S[b, T][None])[0]
        log_reward = energy.log_reward(S[:, -1])
    return log_pf, log_pb, log_flow, log_reward


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("flow", ["forward_looking", "conditional"])
@pytest.mark.parametrize("langevin", [False, True], ids=["nolgv", "lgv"])
def test_real_trajectories_carry_the_spec_log_probabilities_and_flows(direction, flow, langevin):
    gfn = _make_gfn(flow, langevin)
    traj = _rollout(gfn, direction)
    assert traj.states.shape == (GFN_B, GFN_T + 1, 2)
    log_pf, log_pb, log_flow, log_reward = _reference_quantities(gfn, traj.states)
    torch.testing.assert_close(traj.log_pf.double(), log_pf, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(traj.log_pb.double(), log_pb, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(traj.log_reward.double(), log_reward, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(traj.log_flow.double(), log_flow, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(traj.log_Z.double(), log_flow[:, 0], rtol=1e-4, atol=1e-4)
    if flow == "forward_looking":  # the test is sensitive to evaluating the FL term one index off
        shifted = log_flow.clone()
        for i in range(1, GFN_T):
            shifted[:, i] = log_flow[:, i] - _fl_term(gfn, traj.states, i) + _fl_term(gfn, traj.states, i + 1, at=i)
        assert (shifted[:, 1:GFN_T] - traj.log_flow[:, 1:GFN_T].double()).abs().max() > 1e-2


def _fl_term(gfn: DiffusionGFN, states: torch.Tensor, state_index: int, at: int | None = None) -> torch.Tensor:
    """``[B]`` the FL term (1-t)·log N(s; 0, σ²·max(1,i)·dt) + t·log r(s) of step ``at`` on state ``state_index``."""
    i = state_index if at is None else at
    dt = 1.0 / gfn.T
    s = states[:, state_index].detach().double()
    ref = torch.tensor([_log_normal(x, torch.zeros_like(x), gfn.t_scale * max(1, i) * dt) for x in s])
    return (1 - i * dt) * ref + i * dt * gfn.energy.log_reward(s.float()).double()


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_learned_backward_corrections_follow_the_reference_formula(direction):
    gfn = _make_gfn("conditional", langevin=False, learn_pb=True)
    traj = _rollout(gfn, direction)
    _, log_pb, _, _ = _reference_quantities(gfn, traj.states)
    torch.testing.assert_close(traj.log_pb.double(), log_pb, rtol=1e-4, atol=1e-4)
    plain = _reference_quantities(_make_gfn("conditional", langevin=False), traj.states)[1]
    assert (plain - log_pb).abs().max() > 1e-2


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("flow", ["forward_looking", "conditional"])
def test_losses_on_real_trajectories_equal_the_reference(direction, flow):
    gfn = _make_gfn(flow, langevin=True, seed=1)
    traj = _rollout(gfn, direction)
    log_pf, log_pb, log_flow, log_reward = _reference_quantities(gfn, traj.states)
    ref_traj = Trajectories(
        states=traj.states.double(),
        log_pf=log_pf,
        log_pb=log_pb,
        log_reward=log_reward,
        log_Z=log_flow[:, 0],
        log_flow=log_flow,
    )
    for name in LOSSES:
        got = get_loss(name)(traj)
        assert got.shape == (GFN_B,) and got.requires_grad, name
        want = REFS[name](ref_traj)
        torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=1e-3, msg=name)


def test_subtb_in_float32_stays_accurate_when_flows_are_large():
    # The equal-length SubTB is a quadratic form in A_i = log F_i − C_i; expanded naively in float32 it would cancel
    # terms of size A² ~ 1e6 to leave residuals of size 1. It must match the float64 pairwise loop to float32 accuracy.
    t64 = _random_traj(5)
    offset = 1000.0 + 50 * torch.arange(T + 1, dtype=torch.float64)  # large flows, still small residuals
    t64 = dataclasses.replace(t64, log_flow=t64.log_flow + offset, log_reward=t64.log_reward + offset[-1])
    t64 = dataclasses.replace(t64, log_flow=torch.cat([t64.log_flow[:, :-1], t64.log_reward[:, None]], 1))
    t64 = dataclasses.replace(t64, log_pf=t64.log_pf + 50)
    t32 = dataclasses.replace(
        t64, **{k: getattr(t64, k).float() for k in ("states", "log_pf", "log_pb", "log_reward", "log_flow", "log_Z")}
    )
    got = subtrajectory_balance(t32)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref_subtb(t64), rtol=1e-4, atol=1e-4)  # float32 rounding of A

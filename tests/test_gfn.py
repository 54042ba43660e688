"""The diffusion GFlowNet (docs/spec.md §2) on the one target where the answer is known in closed form, plus its rollout
contract: shapes, backward trajectories, random generators and exploration.

For the target N(0, σ²·I) the zero-drift forward process with per-step variance σ²·dt ends exactly at the
target, and the Brownian bridge is its exact posterior, so every trajectory — whatever states it visits — has
log-weight log r(s_T) + Σ log P_B − Σ log P_F = log Z.
"""

import math

import pytest
import torch

from sampler.energies.gaussian import DiagonalGaussian
from sampler.evaluation import evaluate
from sampler.gfn import DiffusionGFN
from sampler.losses import trajectory_balance

LOG_Z = 1.3  # the Gaussian target's log-normaliser; not 0, so that a missing log Z shows
T = 10


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _target(d: int, sigma2: float) -> DiagonalGaussian:
    return DiagonalGaussian(dim=d, mean=0.0, std=math.sqrt(sigma2), log_Z=LOG_Z)


def _exact_gfn(energy: DiagonalGaussian, sigma2: float, flow: str = "scalar", **kw) -> DiffusionGFN:
    """Zero drift, fixed variance σ²·dt: the exact sampler of N(0, σ²·I)."""
    kw = {"zero_init": True, "learned_variance": False, "langevin": False, "hidden_dim": 16} | kw
    return DiffusionGFN(energy, T=T, t_scale=sigma2, flow=flow, log_Z_init=energy.log_Z, **kw)


def _trained_looking_gfn(energy, sigma2: float = 1.0, flow: str = "conditional") -> DiffusionGFN:
    """Non-zero drift and learned variance (random last layer), for checks that must not pass by symmetry."""
    torch.manual_seed(0)
    return DiffusionGFN(energy, T=T, t_scale=sigma2, hidden_dim=16, zero_init=False, learned_variance=True, flow=flow)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _log_pf_recomputed(gfn: DiffusionGFN, states: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` log P_F(s_{i+1} | s_i) of the unexplored policy, calling the policy net one step at a time."""
    d, dt = gfn.dim, gfn.dt
    out = []
    with torch.no_grad():
        for i in range(gfn.T):
            s, s_next = states[:, i], states[:, i + 1]
            o = gfn.policy(s, gfn.policy.embed_time(torch.tensor([i * dt])))
            var = dt * gfn.t_scale * torch.exp(gfn.log_var_range * torch.tanh(o[:, d:]))
            z = (s_next - s - dt * o[:, :d]).pow(2) / var
            out.append(-0.5 * (z + torch.log(2 * math.pi * var)).sum(-1))
    return torch.stack(out, 1)


# --- the analytic check ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma2", [1.0, 5.0])
@pytest.mark.parametrize("d", [2, 5])
@pytest.mark.parametrize("flow", ["scalar", "conditional", "forward_looking"])
def test_every_forward_log_weight_equals_log_Z_for_the_exact_policy(sigma2, d, flow):
    energy = _target(d, sigma2)
    traj = _exact_gfn(energy, sigma2, flow).rollout_forward(512, generator=_gen(0))
    log_w = traj.log_weight()
    torch.testing.assert_close(log_w, torch.full_like(log_w, LOG_Z), rtol=0, atol=1e-4)
    # the terminal states are the target's samples: variance σ² per coordinate
    assert traj.states[:, -1].var().item() == pytest.approx(sigma2, rel=0.1)


@pytest.mark.parametrize("sigma2", [1.0, 5.0])
@pytest.mark.parametrize("d", [2, 5])
def test_tb_is_zero_when_the_policy_is_exact(sigma2, d):
    energy = _target(d, sigma2)
    gfn = _exact_gfn(energy, sigma2)
    forward = gfn.rollout_forward(256, generator=_gen(1))
    backward = gfn.rollout_backward(energy.sample(256, generator=_gen(2)), generator=_gen(3))
    for traj in (forward, backward):
        assert trajectory_balance(traj).max().item() < 1e-8
    # and a wrong log Z is seen: ½ (log Z − 1 − log Z)² = ½ for every trajectory
    with torch.no_grad():
        gfn.log_Z.sub_(1.0)
    torch.testing.assert_close(
        trajectory_balance(gfn.rollout_forward(64, generator=_gen(4))), torch.full((64,), 0.5), rtol=0, atol=1e-4
    )


@pytest.mark.parametrize("variant", [{"learned_variance": True}, {"arch": "mlp"}], ids=["learned_var", "mlp"])
def test_zero_initialised_variants_start_exact(variant):
    # v = range·tanh(0) = 0 and a zero last layer give the same zero-drift σ²·dt policy.
    energy = _target(3, 2.0)
    log_w = _exact_gfn(energy, 2.0, **variant).rollout_forward(256, generator=_gen(5)).log_weight()
    torch.testing.assert_close(log_w, torch.full_like(log_w, LOG_Z), rtol=0, atol=1e-4)


@pytest.mark.parametrize("sigma2", [1.0, 5.0])
@pytest.mark.parametrize("d", [2, 5])
@pytest.mark.parametrize("flow", ["scalar", "conditional", "forward_looking"])
def test_evaluate_reports_a_perfect_sampler(sigma2, d, flow):
    energy = _target(d, sigma2)
    metrics, samples = evaluate(_exact_gfn(energy, sigma2, flow), energy, K=256, seed=0)
    assert samples.shape == (256, d)
    assert set(metrics) == set(
        "log_Z_elbo log_Z_rw log_Z_learned dlogZ dlogZ_rw ess eubo elbo_eubo_gap w2 w2_floor mmd n_energy_calls "
        "eval_K".split()
    )
    assert metrics["n_energy_calls"] == 0  # nothing trained; evaluation's own calls are not counted
    assert metrics["ess"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["dlogZ"] < 1e-4 and metrics["dlogZ_rw"] < 1e-4
    assert metrics["log_Z_elbo"] == pytest.approx(LOG_Z, abs=1e-4)
    assert metrics["eubo"] == pytest.approx(LOG_Z, abs=1e-4)  # the bridge is the exact posterior
    assert metrics["elbo_eubo_gap"] == pytest.approx(0.0, abs=2e-4)  # no gap for an exact sampler
    # log F(s_0): the scalar parameter; a zero network; for FL, plus (1 − 0)·log N(0; 0, σ²·max(1, 0)·dt·I)
    learned = {"scalar": LOG_Z, "conditional": 0.0, "forward_looking": -0.5 * d * math.log(2 * math.pi * sigma2 / T)}
    assert metrics["log_Z_learned"] == pytest.approx(learned[flow], abs=1e-5)


# --- rollout contract -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flow", ["scalar", "conditional", "forward_looking"])
def test_rollout_shapes(flow):
    d, n = 3, 7
    energy = _target(d, 1.0)
    gfn = _trained_looking_gfn(energy, flow=flow)
    forward = gfn.rollout_forward(n, generator=_gen(0))
    backward = gfn.rollout_backward(energy.sample(n, generator=_gen(1)), generator=_gen(2))
    for traj in (forward, backward):
        assert traj.states.shape == (n, T + 1, d)
        assert traj.log_pf.shape == traj.log_pb.shape == (n, T)
        assert traj.log_reward.shape == (n,)
        assert traj.mask is None and traj.terminal_states.shape == (n, d)
        if flow == "scalar":
            assert traj.log_flow is None and traj.log_Z.shape == ()
        else:
            assert traj.log_flow.shape == (n, T + 1) and traj.log_Z.shape == (n,)
            torch.testing.assert_close(traj.log_flow[:, -1], traj.log_reward)
        assert (traj.log_reward_states is not None) == (flow == "forward_looking")
        # the first step of the bridge is deterministic
        assert torch.equal(traj.log_pb[:, 0], torch.zeros(n))


def test_one_step_rollout_has_one_backward_log_probability():
    energy = _target(2, 1.0)
    traj = DiffusionGFN(energy, T=1, hidden_dim=16, learned_variance=False).rollout_forward(4, generator=_gen(0))
    assert traj.log_pb.shape == (4, 1)


def test_policy_gradients_flow_into_log_pf_but_not_through_the_states_unless_reparameterised():
    energy = _target(2, 1.0)
    gfn = _trained_looking_gfn(energy)
    traj = gfn.rollout_forward(8, generator=_gen(0))
    assert traj.log_pf.requires_grad and not traj.states.requires_grad
    reparam = gfn.rollout_forward(8, generator=_gen(0), reparam=True)
    assert reparam.states.requires_grad and reparam.log_reward.requires_grad
    torch.testing.assert_close(reparam.states, traj.states)  # the same noise, the same path
    torch.testing.assert_close(reparam.log_pf, traj.log_pf)


@pytest.mark.parametrize("sigma2", [1.0, 5.0])
def test_backward_trajectories_from_exact_samples_end_at_x_and_start_at_0(sigma2):
    d = 2
    energy = _target(d, sigma2)
    gfn = _exact_gfn(energy, sigma2)
    x = energy.sample(512, generator=_gen(0))
    traj = gfn.rollout_backward(x, generator=_gen(1))
    assert torch.equal(traj.states[:, -1], x)
    assert torch.equal(traj.states[:, 0], torch.zeros_like(x))
    log_w = traj.log_weight()
    torch.testing.assert_close(log_w, torch.full_like(log_w, LOG_Z), rtol=0, atol=1e-4)
    # the bridge marginal at step i is N(x·t_i, σ²·t_i·(1 − t_i)); check the midpoint spread around x/2
    mid = traj.states[:, T // 2] - 0.5 * x
    assert mid.var().item() == pytest.approx(sigma2 * 0.25, rel=0.1)


def test_backward_rollout_drops_a_trailing_extra_column():
    d = 3
    energy = _target(d, 1.0)
    gfn = _trained_looking_gfn(energy)
    x = energy.sample(6, generator=_gen(0))
    padded = torch.cat([x, torch.full((6, 1), 7.0)], 1)  # torchgfn's (B, d+1) states
    a = gfn.rollout_backward(padded, generator=_gen(1))
    b = gfn.rollout_backward(x, generator=_gen(1))
    assert torch.equal(a.states[:, -1], x)
    assert torch.equal(a.states, b.states)
    torch.testing.assert_close(a.log_pf, b.log_pf)
    torch.testing.assert_close(a.log_reward, energy.log_reward(x))


@pytest.mark.parametrize("shape", [(6, 5), (6, 1), (3,), (2, 6, 3)], ids=str)
def test_backward_rollout_rejects_wrong_shapes(shape):
    gfn = _exact_gfn(_target(3, 1.0), 1.0)
    with pytest.raises(ValueError, match=r"rollout_backward expects terminal states of shape \[B, 3\]"):
        gfn.rollout_backward(torch.zeros(shape))


def test_rollouts_are_reproducible_with_a_seeded_generator_and_leave_the_global_rng_alone():
    energy = _target(2, 1.0)
    gfn = _trained_looking_gfn(energy)
    x = energy.sample(16, generator=_gen(9))
    global_state = torch.get_rng_state()
    f1 = gfn.rollout_forward(16, exploration_std=0.2, generator=_gen(7))
    f2 = gfn.rollout_forward(16, exploration_std=0.2, generator=_gen(7))
    b1 = gfn.rollout_backward(x, generator=_gen(7))
    b2 = gfn.rollout_backward(x, generator=_gen(7))
    assert torch.equal(torch.get_rng_state(), global_state)
    assert torch.equal(f1.states, f2.states) and torch.equal(f1.log_pf, f2.log_pf)
    assert torch.equal(b1.states, b2.states) and torch.equal(b1.log_pb, b2.log_pb)
    assert not torch.equal(gfn.rollout_forward(16, generator=_gen(8)).states, f1.states)
    assert not torch.equal(gfn.rollout_backward(x, generator=_gen(8)).states, b1.states)


def test_exploration_widens_the_samples_but_log_pf_stays_the_unexplored_policy():
    sigma2, eps, n = 1.0, 0.5, 4096
    energy = _target(2, sigma2)
    gfn = _exact_gfn(energy, sigma2)
    explored = gfn.rollout_forward(n, exploration_std=eps, generator=_gen(0))
    # T steps of variance σ²·dt + ε²: terminal variance σ² + T·ε² = 3.5 instead of 1
    assert explored.states[:, -1].var().item() == pytest.approx(sigma2 + T * eps**2, rel=0.1)
    # under the unexplored zero-drift policy every path still has log-weight log Z; the explored density would not
    log_w = explored.log_weight()
    torch.testing.assert_close(log_w, torch.full_like(log_w, LOG_Z), rtol=0, atol=1e-4)


def test_explored_log_pf_equals_the_policy_recomputed_on_the_same_states():
    energy = _target(2, 1.0)
    gfn = _trained_looking_gfn(energy)
    plain = gfn.rollout_forward(256, generator=_gen(0))
    explored = gfn.rollout_forward(256, exploration_std=1.0, generator=_gen(0))
    spread = [(tr.states[:, -1] - tr.states[:, -1].mean(0)).pow(2).sum(1).mean().item() for tr in (plain, explored)]
    assert spread[1] > 2 * spread[0]
    torch.testing.assert_close(explored.log_pf, _log_pf_recomputed(gfn, explored.states), rtol=1e-4, atol=1e-4)
    # the explored per-step density N(μ, dt·σ²·e^v + ε²) is a different number
    assert (explored.log_pf.sum(1) - plain.log_pf.sum(1)).abs().max() > 1.0


def test_a_compiled_policy_gives_the_eager_losses_and_gradients():
    # model.compile=true must be a pure speed option: same state dict, same trajectories and TB losses (float32
    # tolerance: fused kernels may round differently), same gradients.
    from sampler.energies import GMM9

    energy = GMM9()
    torch.manual_seed(0)
    eager = DiffusionGFN(energy, T=8, t_scale=5.0, hidden_dim=16, zero_init=False)
    torch.manual_seed(0)
    compiled = DiffusionGFN(energy, T=8, t_scale=5.0, hidden_dim=16, zero_init=False, compile=True)
    assert eager.state_dict().keys() == compiled.state_dict().keys()
    losses, grads = [], []
    for gfn in (eager, compiled):
        traj = gfn.rollout_forward(64, exploration_std=0.1, generator=torch.Generator().manual_seed(3))
        loss = trajectory_balance(traj)
        loss.mean().backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in gfn.policy.parameters()]))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)

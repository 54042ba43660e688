"""Discrete GFlowNets: targets, rollouts, the shared objectives on padded trajectories, exact evaluation, local search,
GAFN and the simple sampling API. Every reference here is computed independently, in float64, from the definitions."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import pytest
import torch

from sampler.buffers import ReplayBuffer
from sampler.discrete import (
    GAFN,
    BackAndForthSearch,
    DeceptiveGrid,
    DiscreteGFN,
    GridEnv,
    HyperGrid,
    ModeTracker,
    back_and_forth,
    empirical_distribution,
    evaluate_discrete,
    exact_terminal_distribution,
    trajectory_balance_loss,
)
from sampler.discrete.plots import plot_grid_distributions, plot_modes_found
from sampler.exploration import LinearDecay
from sampler.losses import detailed_balance, subtrajectory_balance, trajectory_balance, vargrad
from sampler.recipe import Recipe, param_groups

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def small_gfn(env, seed: int = 0, **kw) -> DiscreteGFN:
    torch.manual_seed(seed)
    gfn = DiscreteGFN(env, hidden_dim=32, **kw)
    with torch.no_grad():  # a policy far from uniform, so that mistakes in the bookkeeping show in the numbers
        for p in gfn.parameters():
            p.mul_(3.0)
    return gfn


# ------------------------------------------------------------------------------------------------------ targets
def test_hypergrid_reward_values_and_log_Z_match_the_formula():
    env = HyperGrid(ndim=2, height=16, R0=1e-2, R1=0.5, R2=2.0)
    # x̃ = |x/15 − 0.5|: x = 2 → 0.3667 (both bands), 0 → 0.5 (outer band only), 7 → 0.033 (none),
    # 12 → exactly 0.3, outside the open band 0.3 < x̃ < 0.4
    states = torch.tensor([[2, 13], [0, 15], [7, 2], [12, 12], [2, 12]])
    expected = torch.tensor([2.51, 0.51, 0.01, 0.51, 0.51], dtype=torch.float64).log()
    torch.testing.assert_close(env.log_reward(states), expected)
    # closed form: Σ_x R = R0·H² + R1·n1² + R2·n2², n1 = coordinates in the outer band (x ≤ 3 or x ≥ 12: 8),
    # n2 = coordinates in the mode band (2 and 13)
    assert env.log_Z == pytest.approx(math.log(0.01 * 256 + 0.5 * 8**2 + 2.0 * 2**2), rel=1e-12)
    assert env.n_modes == 4
    assert env.target_probs().sum().item() == pytest.approx(1.0, abs=1e-12)


def test_deceptive_grid_reward_terminal_states_and_modes():
    env = DeceptiveGrid(ndim=2, height=64)
    # x̃ = 2x/63 − 1: x = 31 → −0.016 (centre), 8 → −0.746 (band), 0 → −1 (neither)
    states = torch.tensor([[31, 0], [8, 55], [0, 0], [8, 8], [31, 31]])
    r = torch.tensor([1e-5 + 0.1, 1e-5 + 2.0, 1e-5, 1e-5 + 2.0, 1e-5 + 0.1], dtype=torch.float64)
    torch.testing.assert_close(env.log_reward(states), r.log())
    assert env.n_modes == 12**2  # band coordinates 7..12 and 51..56
    # terminal states: at most one coordinate at the edge H−1 = 63
    assert env.terminal_states().shape[0] == 64**2 - 1
    brute = 0.0
    for x in itertools.product(range(64), repeat=2):
        xt = [2 * v / 63 - 1 for v in x]
        outer = all(abs(v) > 0.2 for v in xt)
        band = all(0.6 < abs(v) < 0.8 for v in xt)
        if sum(v == 63 for v in x) < 2:
            brute += 1e-5 + 0.1 - 0.1 * outer + 2.0 * band
    assert env.log_Z == pytest.approx(math.log(brute), rel=1e-12)


def test_deceptive_grid_float_thresholds_reproduce_the_reference_rounding():
    exact = DeceptiveGrid(ndim=2, height=16)
    rounded = DeceptiveGrid(ndim=2, height=16, float_thresholds=True)
    assert exact.mode_band.nonzero().flatten().tolist() == [2, 13]
    assert rounded.mode_band.nonzero().flatten().tolist() == [2, 12, 13]
    assert (exact.n_modes, rounded.n_modes) == (4, 9)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ndim": 0}, "energy.ndim must be a whole number >= 1"),
        ({"height": 1}, "energy.height must be a whole number >= 2"),
        ({"height": -3}, "energy.height must be a whole number >= 2"),
        ({"R0": 0.0}, "energy.R0 must be a finite number > 0"),
        ({"R0": -1e-3}, "energy.R0 must be a finite number > 0"),
        ({"R1": float("nan")}, "energy.R1 must be a finite number >= 0"),
        ({"ndim": 6, "height": 16}, "set energy.exact=false to switch them off"),
    ],
)
@pytest.mark.parametrize("cls", [HyperGrid, DeceptiveGrid])
def test_bad_target_arguments_are_one_line_errors(cls, kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        cls(**kwargs)
    assert "\n" not in str(err.value)


def test_a_large_grid_builds_without_the_exact_metrics():
    env = HyperGrid(ndim=6, height=16, exact=False)
    assert env.log_Z is None and not env.has_sampler and env.n_modes == 2**6
    gfn = small_gfn(env)
    metrics = evaluate_discrete(gfn, n_samples=64, generator=gen())
    assert set(metrics) == {"n_empirical", "modes_found", "modes_total", "log_Z_learned"}


class BadReward(GridEnv):
    """A user's grid reward that is zero on the diagonal."""

    def log_reward(self, x):
        x = x.long()
        return torch.where(x[..., 0] == x[..., 1], torch.tensor(0.0), torch.tensor(1.0)).log()


def test_a_reward_that_is_not_positive_is_one_clear_error():
    env = BadReward(ndim=2, height=4)
    with pytest.raises(ValueError, match=r"BadReward.log_reward returned 4 non-finite values .* positive and finite"):
        env.validate()
    gfn = small_gfn(BadReward(ndim=2, height=4, exact=False))
    with pytest.raises(ValueError, match="rewards must be positive and finite"):
        gfn.rollout_backward(torch.tensor([[1.0, 1.0]]))


def test_a_custom_grid_reward_gets_exact_metrics():
    class Corner(GridEnv):
        def log_reward(self, x):
            return x.double().sum(-1) * math.log(2.0)  # r = 2^(x0 + x1)

    env = Corner(ndim=2, height=3)
    assert env.log_Z == pytest.approx(math.log(sum(2 ** (a + b) for a in range(3) for b in range(3))), rel=1e-12)
    assert env.n_modes == 1
    metrics = evaluate_discrete(small_gfn(env), n_samples=100, generator=gen())
    assert {"l1_exact", "kl_exact", "jsd_exact", "l1_empirical"} <= set(metrics)


# ------------------------------------------------------------------------------------------------------ rollouts
def _policy_log_probs(gfn, s: tuple[int, ...]) -> torch.Tensor:
    """log P_F(· | s) for one state, computed on its own in float64."""
    with torch.no_grad():
        return gfn.log_policy(torch.tensor([s]), torch.float64)[0]


def _parents(env, s: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Valid parents of s, written out from the definition of each grid."""
    out = []
    for i, v in enumerate(s):
        if v == 0:
            continue
        p = list(s)
        p[i] -= 1
        if isinstance(env, DeceptiveGrid) and max(p) == env.height - 1:
            continue  # a parent on the edge would be terminal
        out.append(tuple(p))
    return out


def _reference(gfn, traj, b: int):
    """(Σ log P_F, Σ log P_B, [(log F_i, log P_F_i, log P_B_i)] per transition) of trajectory b, from its states."""
    env = gfn.env
    L = int(traj.mask[b].sum())
    S = [tuple(int(v) for v in traj.states[b, t]) for t in range(L + 1)]
    steps = []
    for t in range(L):
        s, s_next = S[t], S[t + 1]
        lp = _policy_log_probs(gfn, s)
        if s_next == s:  # stop
            steps.append((float(lp[env.ndim]), 0.0))
        else:
            a = next(i for i in range(env.ndim) if s_next[i] == s[i] + 1)
            steps.append((float(lp[a]), -math.log(len(_parents(env, s_next)))))
    return S, steps


@pytest.mark.parametrize("env", [HyperGrid(2, 4), DeceptiveGrid(2, 5, R0=0.1), HyperGrid(3, 3)], ids=str)
def test_forward_rollouts_are_valid_padded_trajectories_with_correct_log_probabilities(env):
    gfn = small_gfn(env)
    traj = gfn.rollout_forward(64, generator=gen(1))
    B, T = traj.mask.shape
    assert traj.states.shape == (B, T + 1, env.ndim) and traj.states.dtype == torch.float32
    L = traj.mask.sum(1)
    assert bool((traj.mask == (torch.arange(T)[None] < L[:, None])).all())  # left-aligned
    for b in range(B):
        S, steps = _reference(gfn, traj, b)
        assert S[0] == (0,) * env.ndim
        for t in range(len(S) - 1):
            d = [S[t + 1][i] - S[t][i] for i in range(env.ndim)]
            assert sorted(d) in ([0] * env.ndim, [0] * (env.ndim - 1) + [1])
        forced = isinstance(env, DeceptiveGrid) and max(S[-1]) == env.height - 1
        assert (S[-1] == S[-2]) != forced  # ends with stop, or on arrival at the edge
        assert bool((traj.states[b, len(S) - 1 :] == traj.states[b, len(S) - 1]).all())  # padding repeats x
        torch.testing.assert_close(traj.log_pf[b, : len(steps)].double(), torch.tensor([p for p, _ in steps],
                                   dtype=torch.float64), atol=1e-5, rtol=0)  # fmt: skip
        torch.testing.assert_close(traj.log_pb[b, : len(steps)].double(), torch.tensor([q for _, q in steps],
                                   dtype=torch.float64), atol=1e-6, rtol=0)  # fmt: skip
        assert float(traj.log_reward[b]) == pytest.approx(float(env.log_reward(torch.tensor(S[-1]))), abs=1e-6)
    assert bool((traj.log_pf[~traj.mask] == 0).all()) and bool((traj.log_pb[~traj.mask] == 0).all())


@pytest.mark.parametrize("env", [HyperGrid(2, 5), DeceptiveGrid(2, 6, R0=0.1)], ids=str)
def test_tabulated_and_step_by_step_rollouts_agree(env):
    # The tabulated path evaluates the networks once on every state; the other one on the visited states only.
    gfn = small_gfn(env, pb="learned", flow="conditional")
    for eps in (0.0, 0.3):
        gfn.tabulate = True
        a = gfn.rollout_forward(64, epsilon=eps, generator=gen(20))
        gfn.tabulate = False
        b = gfn.rollout_forward(64, epsilon=eps, generator=gen(20))
        assert torch.equal(a.states, b.states) and torch.equal(a.mask, b.mask)
        for name in ("log_pf", "log_pb", "log_flow", "log_reward"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=1e-5, rtol=1e-5, msg=name)
    x = a.terminal_states
    gfn.tabulate = True
    c = gfn.rollout_backward(x, generator=gen(21))
    gfn.tabulate = False
    d = gfn.rollout_backward(x, generator=gen(21))
    assert torch.equal(c.states, d.states)
    torch.testing.assert_close(c.log_pf, d.log_pf, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c.log_pb, d.log_pb, atol=1e-5, rtol=1e-5)
    gfn.tabulate = True
    s1 = gfn.sample(500, generator=gen(22))
    gfn.tabulate = False
    assert torch.equal(s1, gfn.sample(500, generator=gen(22)))


def test_backward_rollouts_end_at_the_given_states_and_follow_the_uniform_backward_policy():
    env = HyperGrid(2, 4)
    gfn = small_gfn(env)
    x = torch.tensor([[1.0, 1.0]] * 4000 + [[0.0, 0.0], [3.0, 0.0]])
    traj = gfn.rollout_backward(x, generator=gen(2))
    assert bool((traj.terminal_states == x).all()) and bool((traj.states[:, 0] == 0).all())
    via_10 = (traj.states[:4000, 1] == torch.tensor([1.0, 0.0])).all(-1).float().mean()
    assert float(via_10) == pytest.approx(0.5, abs=0.03)  # P_B((1,0) | (1,1)) = 1/2
    assert int(traj.mask[-2].sum()) == 1  # the origin: one stop transition
    with pytest.raises(ValueError, match="not terminal states"):
        gfn.rollout_backward(torch.tensor([[4.0, 0.0]]))
    with pytest.raises(ValueError, match=r"shape \[B, 2\]"):
        gfn.rollout_backward(torch.zeros(3))


def test_deceptive_backward_trajectories_never_pass_through_edge_states():
    env = DeceptiveGrid(2, 6)
    gfn = small_gfn(env, pb="learned")
    x = torch.tensor([[5.0, 3.0], [2.0, 5.0], [5.0, 0.0]] * 50)
    traj = gfn.rollout_backward(x, generator=gen(3))
    L = traj.mask.sum(1)
    for b in range(traj.batch_size):
        inner = traj.states[b, : int(L[b])]  # every state before the terminal one
        assert bool((inner < 5).all())
        assert int(L[b]) == int(x[b].sum())  # edge states end on arrival: no stop transition


def test_exploration_temperature_and_the_exploration_std_alias():
    env = HyperGrid(2, 8)
    gfn = small_gfn(env)
    first = gfn.rollout_forward(6000, epsilon=1.0, generator=gen(4)).states[:, 1]
    moved = (first != 0).any(-1).float().mean()  # ε = 1: uniform over {+x0, +x1, stop}
    assert float(moved) == pytest.approx(2 / 3, abs=0.02)
    a = gfn.rollout_forward(32, epsilon=0.3, generator=gen(5))
    b = gfn.rollout_forward(32, exploration_std=0.3, generator=gen(5))
    assert torch.equal(a.states, b.states)
    torch.testing.assert_close(a.log_pf, b.log_pf)  # log P_F is the unexplored policy's either way
    hot = gfn.rollout_forward(6000, temperature=1e4, generator=gen(6)).states[:, 1]
    assert float((hot != 0).any(-1).float().mean()) == pytest.approx(2 / 3, abs=0.02)
    with pytest.raises(ValueError, match="not both"):
        gfn.rollout_forward(4, epsilon=0.1, exploration_std=0.1)
    with pytest.raises(ValueError, match="cannot be reparameterised"):
        gfn.rollout_forward(4, reparam=True)


def test_parameter_groups_cover_every_parameter():
    for pb, flow in [("uniform", "scalar"), ("learned", "conditional")]:
        gfn = DiscreteGFN(HyperGrid(2, 4), hidden_dim=16, pb=pb, flow=flow)
        names = [g["name"] for g in param_groups(gfn)]
        assert names == (["policy", "flow"] if pb == "uniform" else ["policy", "flow", "backward"])


# ------------------------------------------------------------------------------------------------------ objectives
@pytest.mark.parametrize("env", [HyperGrid(2, 3), DeceptiveGrid(2, 4, R0=0.1)], ids=str)
def test_the_shared_objectives_match_float64_references_on_padded_trajectories(env):
    gfn = small_gfn(env, flow="conditional")
    traj = gfn.rollout_forward(24, generator=gen(7))
    log_Z = float(gfn.log_Z_learned.detach())
    tb_ref, db_ref, subtb_ref, deltas = [], [], [], []
    for b in range(traj.batch_size):
        S, steps = _reference(gfn, traj, b)
        log_r = float(env.log_reward(torch.tensor(S[-1])))
        with torch.no_grad():
            flows = [float(gfn.log_flow_at(torch.tensor([s]))[0]) for s in S[:-1]] + [log_r]
        delta = log_Z + sum(p for p, _ in steps) - sum(q for _, q in steps) - log_r
        deltas.append(delta)
        tb_ref.append(0.5 * delta**2)
        db_ref.append(sum(0.5 * (flows[i] + p - q - flows[i + 1]) ** 2 for i, (p, q) in enumerate(steps)))
        L = len(steps)
        pairs = [(i, j) for i in range(L + 1) for j in range(i + 1, L + 1)]
        w = [2.0 ** (j - i) for i, j in pairs]
        res = [flows[i] - flows[j] + sum(steps[k][0] - steps[k][1] for k in range(i, j)) for i, j in pairs]
        subtb_ref.append(sum(wi * r * r for wi, r in zip(w, res)) / sum(w))
    mean = sum(deltas) / len(deltas)
    vg_ref = [0.5 * (d - mean) ** 2 for d in deltas]
    ref = {"tb": tb_ref, "db": db_ref, "subtb": subtb_ref, "vargrad": vg_ref}
    got = {
        "tb": trajectory_balance(traj),
        "db": detailed_balance(traj),
        "subtb": subtrajectory_balance(traj, lam=2.0),
        "vargrad": vargrad(traj),
    }
    for name, value in got.items():
        torch.testing.assert_close(value.double(), torch.tensor(ref[name], dtype=torch.float64), atol=2e-4, rtol=1e-4,
                                   msg=name)  # fmt: skip


def test_the_simple_api_loss_is_twice_the_mean_trajectory_balance_loss():
    env = HyperGrid(2, 4)
    gfn = small_gfn(env)
    x, log = gfn.sample_states(torch.zeros(16, 2, dtype=torch.long), return_log=True, generator=gen(8))
    assert x.dtype == torch.long and x.shape == (16, 2)
    loss = trajectory_balance_loss(log.log_total_flow, log.rewards, log.fwd_log_probs, log.back_log_probs)
    torch.testing.assert_close(loss, 2 * trajectory_balance(log.traj).mean())
    plain = gfn.sample_states(torch.zeros(5, 2), generator=gen(8))
    assert plain.shape == (5, 2) and bool(env.terminal_mask(plain).all())
    with pytest.raises(ValueError, match="initial state"):
        gfn.sample_states(torch.ones(4, 2))


def test_the_simple_api_trains_a_small_grid():
    env = HyperGrid(2, 4, R0=0.1)
    torch.manual_seed(0)
    gfn = DiscreteGFN(env, hidden_dim=64)
    opt = torch.optim.Adam([{"params": gfn.policy_parameters(), "lr": 3e-3}, {"params": [gfn.log_Z], "lr": 0.1}])
    g = gen(9)
    before = float((exact_terminal_distribution(gfn) - env.target_probs()).abs().sum())
    for _ in range(150):
        _, log = gfn.sample_states(torch.zeros(32, 2), return_log=True, generator=g)
        loss = trajectory_balance_loss(log.log_total_flow, log.rewards, log.fwd_log_probs, log.back_log_probs)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = float((exact_terminal_distribution(gfn) - env.target_probs()).abs().sum())
    assert before > 0.4 and after < 0.15
    assert float(gfn.log_Z.detach()) == pytest.approx(env.log_Z, abs=0.15)


@pytest.mark.parametrize(
    "loss, flow, phases, source",
    [("tb", "scalar", "both_ways", "buffer"), ("db", "conditional", "forward", "exact"),
     ("subtb", "conditional", "both_ways", "local_search")],
)  # fmt: skip
def test_the_training_recipe_drives_a_discrete_gfn(loss, flow, phases, source):
    env = HyperGrid(2, 5)
    gfn = small_gfn(env, flow=flow)
    buffer = ReplayBuffer(1000, env.dim)
    search = BackAndForthSearch(iterations=1, every=2).attach(gfn) if source == "local_search" else None
    recipe = Recipe(gfn, loss, exploration=LinearDecay(0.5, 10), phases=phases, replay=buffer, local_search=search,
                    backward_source=source, batch_size=8)  # fmt: skip
    opt = torch.optim.Adam(param_groups(gfn, lr_policy=1e-3, lr_flow=1e-2))
    for step in range(4):
        stats = recipe.step(step, opt, generator=gen(step))
        assert math.isfinite(float(stats["loss"]))
    assert len(buffer) > 0


# ------------------------------------------------------------------------------------------------------ evaluation
@pytest.mark.parametrize("env", [HyperGrid(2, 3), DeceptiveGrid(2, 4, R0=0.1), HyperGrid(3, 2)], ids=str)
def test_the_exact_distribution_equals_the_sum_over_every_trajectory(env):
    gfn = small_gfn(env, seed=1)
    mass: dict[tuple, float] = {}
    back_mass: dict[tuple, float] = {}

    def add(x, log_pf, log_pb):
        mass[x] = mass.get(x, 0.0) + math.exp(log_pf)
        back_mass[x] = back_mass.get(x, 0.0) + math.exp(log_pb)

    def walk(s, log_pf, log_pb):
        lp = _policy_log_probs(gfn, s)
        if isinstance(env, DeceptiveGrid) and max(s) == env.height - 1:
            add(s, log_pf, log_pb)  # arriving on the edge ends the trajectory
            return
        add(s, log_pf + float(lp[env.ndim]), log_pb)  # stop here
        for i in range(env.ndim):
            if s[i] < env.height - 1:
                t = tuple(v + (j == i) for j, v in enumerate(s))
                walk(t, log_pf + float(lp[i]), log_pb - math.log(len(_parents(env, t))))

    walk((0,) * env.ndim, 0.0, 0.0)
    x = env.terminal_states()
    brute = torch.tensor([mass[tuple(v.tolist())] for v in x], dtype=torch.float64)
    # float32 logits of a batch and of one state differ in the last bits, hence the tolerance
    torch.testing.assert_close(exact_terminal_distribution(gfn), brute, atol=1e-7, rtol=1e-5)
    assert brute.sum().item() == pytest.approx(1.0, abs=1e-9)
    # P_B is a distribution over the trajectories into each x: its total mass per terminal state is 1
    torch.testing.assert_close(torch.tensor([back_mass[tuple(v.tolist())] for v in x], dtype=torch.float64),
                               torch.ones(x.shape[0], dtype=torch.float64), atol=1e-9, rtol=0)  # fmt: skip


def test_evaluate_discrete_keys_and_values():
    env = HyperGrid(2, 8)
    gfn = small_gfn(env)
    m = evaluate_discrete(gfn, n_samples=4000, generator=gen(10))
    assert list(m) == ["l1_exact", "kl_exact", "jsd_exact", "l1_empirical", "l1_empirical_mean", "n_empirical",
                       "modes_found", "modes_total", "log_Z_learned", "log_Z"]  # fmt: skip
    p, pi = exact_terminal_distribution(gfn), env.target_probs()
    assert m["l1_exact"] == pytest.approx(float((p - pi).abs().sum()), rel=1e-9)
    assert m["kl_exact"] == pytest.approx(float((pi * (pi / p).log()).sum()), rel=1e-9)
    assert 0 < m["jsd_exact"] < math.log(2)
    assert m["l1_empirical_mean"] == pytest.approx(m["l1_empirical"] / 64, rel=1e-9)
    assert m["l1_empirical"] == pytest.approx(m["l1_exact"], abs=0.1)  # 4000 samples of 64 states
    assert m["n_empirical"] == 4000 and m["modes_total"] == 4 and m["log_Z"] == pytest.approx(env.log_Z)
    x = gfn.sample(4000, generator=gen(10))
    assert m["modes_found"] == len({tuple(v) for v in x[env.is_mode(x)].tolist()})


def test_a_perfect_sampler_scores_zero_exact_distance_and_a_small_empirical_one():
    env = HyperGrid(2, 5)
    x = env.sample(20000, generator=gen(11))
    p_hat = empirical_distribution(env, x)
    assert float((p_hat - env.target_probs()).abs().sum()) < 0.05


def test_mode_tracker_counts_distinct_modes_and_round_trips():
    env = HyperGrid(2, 16)
    tracker = ModeTracker(env)
    assert tracker.update(torch.tensor([[2, 2], [2, 2], [0, 0]])) == 1
    assert tracker.update(torch.tensor([[13.0, 2.0], [7.0, 7.0]])) == 2
    assert tracker.metrics() == {"modes_found_train": 2.0, "n_trajectories": 5.0}
    other = ModeTracker(env)
    other.load_state_dict(tracker.state_dict())
    assert other.found == tracker.found and other.history == [(3, 1), (5, 2)]


def test_plots_are_written(tmp_path):
    env = HyperGrid(2, 6)
    gfn = small_gfn(env)
    tracker = ModeTracker(env)
    tracker.update(gfn.sample(64, generator=gen(12)))
    a = plot_grid_distributions(env, gfn, gfn.sample(500, generator=gen(12)), tmp_path / "grid.png")
    b = plot_modes_found(tracker, tmp_path / "modes.png")
    assert a.stat().st_size > 1000 and b.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "modes.png"]
    with pytest.raises(ValueError, match="2-D grid"):
        plot_grid_distributions(HyperGrid(3, 3), small_gfn(HyperGrid(3, 3)), torch.zeros(1, 3), tmp_path / "x.png")


# ------------------------------------------------------------------------------------------------------ off-policy
def test_back_and_forth_never_lowers_the_reward_and_keeps_terminal_states():
    env = DeceptiveGrid(2, 8, R0=1e-3)
    torch.manual_seed(0)
    gfn = DiscreteGFN(env, hidden_dim=32)  # near-uniform policy: trajectories of every length
    x0 = gfn.sample(256, generator=gen(13))
    x, log_r, accepted = back_and_forth(gfn, x0, back_ratio=0.5, iterations=3, generator=gen(13))
    assert bool((log_r >= env.log_reward(x0)).all()) and bool(accepted.any())
    assert bool(env.terminal_mask(x).all()) and torch.equal(log_r, env.log_reward(x))
    assert bool((x[~accepted] == x0[~accepted]).all())
    search = BackAndForthSearch(back_ratio=0.5, iterations=2)
    with pytest.raises(RuntimeError, match="attach"):
        search.run(x0.float(), env)
    xs, lrs = search.attach(gfn).run(x0.float(), env, gen(14))
    assert xs.shape == x0.shape and xs.dtype == torch.float32 and 0 <= search.stats()["accept_rate"] <= 1
    with pytest.raises(ValueError, match="back_ratio"):
        BackAndForthSearch(back_ratio=0.0)


def test_gafn_with_zero_scale_changes_nothing_and_adds_the_novelty_otherwise():
    env = HyperGrid(2, 6)
    gfn = small_gfn(env)
    traj = gfn.rollout_forward(32, generator=gen(15))
    zero = GAFN(gfn, scale=0.0).augment(traj)
    torch.testing.assert_close(zero.log_reward, traj.log_reward)
    torch.testing.assert_close(zero.log_pb, traj.log_pb)
    gafn = GAFN(gfn, scale=0.5)
    aug = gafn.augment(traj)
    x = traj.terminal_states
    nu = 0.5 * (gafn.rnd.predictor(env.encode(x)) - gafn.rnd.target(env.encode(x))).norm(dim=-1)
    torch.testing.assert_close(aug.log_reward.exp(), traj.log_reward.exp() + nu.detach(), rtol=1e-5, atol=1e-6)
    b, t = int((traj.mask.sum(1) >= 3).nonzero()[0, 0]), 0  # the first move of a trajectory with two or more
    s1 = traj.states[b, 1][None]
    expected = (traj.log_pb[b, t].exp() + gafn.novelty(s1)[0] / gafn._log_flow(s1)[0].exp()).log()
    torch.testing.assert_close(aug.log_pb[b, t], expected, rtol=1e-5, atol=1e-6)
    opt = torch.optim.Adam([g for grp in gafn.param_groups(1e-2, 1e-3) for g in grp["params"]], lr=1e-2)
    first = gafn.loss(traj).item()
    for _ in range(30):
        opt.zero_grad()
        gafn.loss(traj).backward()
        opt.step()
    assert gafn.loss(traj).item() < 0.5 * first  # visited states become familiar
    assert trajectory_balance(gafn.augment(traj)).shape == (32,)


def test_the_python_blocks_of_docs_discrete_run():
    text = (Path(__file__).parents[1] / "docs" / "discrete.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2
    for block in blocks:
        exec(block.replace("range(2000)", "range(3)"), {"__name__": "docs_discrete"})  # noqa: S102

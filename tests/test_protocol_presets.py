"""The Sendera et al. (2024) presets follow the published gfn-diffusion code that produced their Table C.1: ε decays
to 0 over 5000 steps, the learned state flow is a head (not zero-initialised) on the policy's time and state
embeddings, and the Langevin scale g(t) has two hidden layers. The shared-embedding flow keeps the recorded (fast)
network pass, so its gradient is checked against plain autograd in float64.
"""

import copy
from pathlib import Path

import pytest
import torch
from conftest import CONF, compose_cfg
from hydra.utils import instantiate

from sampler.energies import GMM9
from sampler.gfn import DiffusionGFN
from sampler.training.module import SamplerModule

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

SENDERA = sorted(p.stem for p in Path(CONF, "experiment").glob("*.yaml") if not p.stem.startswith("at_"))
EXPLORING = [name for name in SENDERA if "_expl" in name]
T = 10


def test_the_preset_lists_are_the_paper_rows():
    # guards the parametrisations below against a renamed or dropped preset
    assert len(SENDERA) == 11 and set(EXPLORING) == {
        "tb_expl",
        "tb_expl_lp",
        "tb_expl_ls",
        "tb_expl_lp_ls",
        "vargrad_expl",
        "vargrad_expl_lp_ls",
    }


@pytest.mark.parametrize("name", EXPLORING)
def test_exploring_presets_decay_epsilon_to_zero_over_5000_steps(name):
    cfg = compose_cfg([f"experiment={name}", "energy=gmm25"])
    assert cfg.trainer.max_steps in (10000, 25000) and cfg.exploration.horizon == 5000
    schedule = instantiate(cfg.exploration)
    eps = cfg.exploration.start
    for step in (0, 1, 2500, 4999, 5000, 5001, 12500, cfg.trainer.max_steps):
        assert (schedule(step) or 0.0) == eps * max(0.0, 1.0 - step / 5000), step
    assert schedule(4999) > 0 and schedule(5000) is None


def test_half_the_run_stays_the_generic_horizon_and_one_override_away():
    assert compose_cfg(["exploration=linear", "trainer.max_steps=25000"]).exploration.horizon == 12500
    cfg = compose_cfg(["experiment=tb_expl", "exploration.horizon='${half_run:${trainer.max_steps}}'"])
    assert cfg.exploration.horizon == 12500


@pytest.mark.parametrize("name", SENDERA)
def test_presets_with_a_learned_flow_share_the_policy_embeddings_as_published(name):
    model = compose_cfg([f"experiment={name}", "energy=gmm25"]).model
    learned_flow = model.flow != "scalar"
    assert learned_flow == name.startswith("fl_subtb")
    assert model.flow_shares_embeddings == learned_flow
    assert model.flow_zero_init == (False if learned_flow else None)
    assert model.lgv_layers == (3 if model.langevin else 2)


def test_without_the_presets_the_flow_is_a_zero_initialised_network_of_its_own():
    model = compose_cfg(["loss=fl_subtb"]).model
    assert not model.flow_shares_embeddings and model.flow_zero_init is None and model.lgv_layers == 2


def _shared_gfn(flow: str = "forward_looking", native: str = "auto", **kw) -> DiffusionGFN:
    torch.manual_seed(0)
    kw = {"zero_init": True, "learned_variance": False, "flow_zero_init": False} | kw
    return DiffusionGFN(
        GMM9(), T=T, t_scale=5.0, hidden_dim=16, flow=flow, flow_shares_embeddings=True, engine=native, **kw
    )


def test_shared_flow_is_a_head_on_the_policy_embeddings_with_a_random_last_layer():
    gfn = _shared_gfn()
    flow, policy = gfn.flow_net, gfn.policy
    assert flow.state_net is policy.state_net and flow.time_net is policy.time_net
    assert flow.time_features is policy.time_features
    assert flow.out.weight.abs().min() > 0 and policy.out.weight.abs().max() == 0  # flow head: not zero-initialised
    head = {id(p) for m in (flow.joint, flow.out) for p in m.parameters()}
    assert {id(p) for p in gfn.flow_parameters()} == head
    assert not any(k.startswith("flow_net.") and ("state_net" in k or "time_" in k) for k in gfn.state_dict())
    # the same network (4 joint/out tensors) on fresh embeddings would hold 4 + 7 (phase, time_net ×4, state_net ×2)
    separate = DiffusionGFN(GMM9(), T=T, hidden_dim=16, flow="forward_looking")
    assert len(separate.flow_parameters()) == len(gfn.flow_parameters()) + 7


def test_scalar_flow_ignores_the_shared_embedding_option():
    gfn = DiffusionGFN(GMM9(), T=T, hidden_dim=16, flow="scalar", flow_shares_embeddings=True)
    assert gfn.flow_net is None and not gfn.flow_shares_embeddings and gfn.flow_parameters() == [gfn.log_Z]


@pytest.mark.parametrize("shares", [True, False], ids=["shared", "separate"])
def test_the_flow_loss_reaches_the_policy_embeddings_only_when_shared(shares):
    # The policy's last layer is zero, so nothing from log P_F reaches the layers below it: any gradient of the
    # policy's embeddings comes from the flow (whose last layer is random in both variants).
    torch.manual_seed(0)
    kw = {"flow": "forward_looking", "flow_shares_embeddings": shares, "flow_zero_init": False}
    gfn = DiffusionGFN(GMM9(), T=T, t_scale=5.0, hidden_dim=16, **kw)
    traj = gfn.rollout_forward(32, exploration_std=0.2, generator=torch.Generator().manual_seed(1))
    from sampler.losses import get_loss

    get_loss("fl_subtb")(traj).mean().backward()
    p = gfn.policy
    embedding = [p.time_features.phase, *p.time_net.parameters(), *p.state_net.parameters()]
    assert all((e.grad is not None and e.grad.abs().max() > 0) == shares for e in embedding)
    assert all(q.grad.abs().max() > 0 for q in gfn.flow_parameters())


def test_optimiser_groups_are_the_published_ones(tiny_cfg):
    # gfn-diffusion: time/state embeddings, joint policy and Langevin scale at lr_policy; the flow head at lr_flow
    module = SamplerModule(tiny_cfg("experiment=fl_subtb_lp", "energy=gmm9"))
    (opt,) = module.configure_optimizers()
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"policy", "flow"}
    assert (groups["policy"]["lr"], groups["flow"]["lr"]) == (1e-3, 1e-2)
    gfn = module.gfn
    ids = {name: [id(p) for p in g["params"]] for name, g in groups.items()}
    flat = ids["policy"] + ids["flow"]
    assert len(flat) == len(set(flat)) == len(list(gfn.parameters()))
    expected_policy = {id(p) for m in (gfn.policy, gfn.lgv_scale) for p in m.parameters()}
    assert set(ids["policy"]) == expected_policy
    assert set(ids["flow"]) == {id(p) for m in (gfn.flow_net.joint, gfn.flow_net.out) for p in m.parameters()}
    assert len(gfn.lgv_scale.net) == 7  # Linear → 2 × [GELU → Linear] → GELU → Linear (published --lgv_layers 3)


def _flow_pass_reference(gfn: DiffusionGFN, states: torch.Tensor, weights: torch.Tensor):
    """Σ w·F_θ(s_i, t_i) over the inner states of ``states [B, T+1, d]``, by plain autograd through a float64 copy
    of the modules: (value [B, T], gradients by parameter name)."""
    ref = copy.deepcopy(gfn).double()
    emb = ref.policy.embed_time(ref.times[:T])  # [T, H]
    pre = ref.policy.state_net(states[:, :T].double()) + emb  # [B, T, H]
    F = ref.flow_net.out(ref.flow_net.joint(pre)).squeeze(-1)  # [B, T]
    (F * weights.double()).sum().backward()
    return F, {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("native", ["native", "fused"], ids=["native", "pytorch"])
@pytest.mark.parametrize("flow", ["conditional", "forward_looking"])
def test_shared_flow_pass_gradient_equals_float64_autograd(direction, native, flow):
    kernels = pytest.importorskip("sampler.gfn.accelerators.native")
    if native == "native" and kernels.load(required=False) is None:
        pytest.skip("the native kernels cannot be built here")
    gfn = _shared_gfn(flow, native, zero_init=False, learned_variance=True)
    gen = torch.Generator().manual_seed(3)
    if direction == "forward":
        traj = gfn.rollout_forward(24, exploration_std=0.2, generator=gen)
    else:
        traj = gfn.rollout_backward(GMM9().sample(24, generator=gen), generator=gen)
    weights = torch.randn(24, T, generator=torch.Generator().manual_seed(4))
    (traj.log_flow[:, :T] * weights).sum().backward()
    grads = {n: p.grad for n, p in gfn.named_parameters() if p.grad is not None}
    F_ref, grads_ref = _flow_pass_reference(gfn, traj.states.detach(), weights)
    if flow == "conditional":
        torch.testing.assert_close(traj.log_flow[:, :T].detach().double(), F_ref.detach(), rtol=1e-5, atol=1e-5)
    assert grads.keys() == grads_ref.keys()
    assert {"policy.state_net.weight", "policy.time_features.phase", "flow_net.out.weight"} <= grads.keys()
    assert not any(n.startswith("policy.joint") or n.startswith("policy.out") for n in grads)
    for name, g in grads_ref.items():
        torch.testing.assert_close(grads[name].double(), g, rtol=1e-4, atol=1e-4 * g.abs().max().item(), msg=name)


def test_a_shared_embedding_fl_subtb_run_trains(tiny_cfg):
    module = SamplerModule(tiny_cfg("experiment=fl_subtb", "energy=gmm9", "train.batch_size=64", "seed=1"))
    assert module.gfn.flow_shares_embeddings
    (opt,) = module.configure_optimizers()
    losses = torch.stack([module.train_step(step, opt) for step in range(50)])
    assert torch.isfinite(losses).all()
    assert losses[-10:].mean() < 0.7 * losses[:10].mean(), losses

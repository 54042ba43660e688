"""The engines that compute a diffusion GFN's rollouts (docs/design.md, "Engines").

The reference engine (plain autograd) defines what a rollout is; each accelerated engine must give the same states,
log-densities, flows and every gradient on every model it accepts, and every other model must run on the reference
engine: ``auto`` falls back with one log line, ``fused`` / ``native`` refuse with one line naming the reason.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import weighted_rollout_loss
from torch import nn

from sampler.energies import GMM9, ManyWell
from sampler.gfn import DiffusionGFN
from sampler.gfn.nets import StateTimeNet
from sampler.gfn.reference import ReferenceEngine
from sampler.training.config_check import ConfigError
from sampler.training.module import build_gfn

REPO = Path(__file__).resolve().parents[1]

VARIANTS = {
    "learned_var": {},
    "fixed_var": {"learned_variance": False},
    "lp": {"langevin": True},
    "lp_per_dim_no_clip": {"langevin": True, "langevin_per_dim": True, "clipping": False},
    "mlp": {"arch": "mlp"},
    "1_layer": {"num_layers": 1},
    "3_layers_fl_pb": {"num_layers": 3, "flow": "forward_looking", "learn_pb": True},
    "conditional_flow": {"flow": "conditional"},
    "shared_flow": {"flow": "forward_looking", "flow_shares_embeddings": True, "langevin": True},
    "tight_out_clip": {"out_clip": 0.3},
}


def _accelerated_engines() -> list[str]:
    try:
        from sampler.gfn.accelerators import native  # noqa: PLC0415
    except ImportError:
        return []
    return ["fused", "native"] if native.load(required=False) is not None else ["fused"]


ENGINES = _accelerated_engines()


@pytest.fixture(autouse=True)
def two_threads():
    """Two intra-op threads, so the native kernels' per-thread row chunks and accumulators are exercised."""
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


def _pair(engine: str, energy, T: int = 10, **options) -> tuple[DiffusionGFN, DiffusionGFN]:
    """The same model (same weights) on ``engine`` and on the reference engine."""
    gfns = []
    for mode in (engine, "reference"):
        torch.manual_seed(3)
        gfns.append(DiffusionGFN(energy, T=T, t_scale=2.0, hidden_dim=16, zero_init=False, engine=mode, **options))
    assert gfns[1].engine.name == "reference" and gfns[0].engine.name == engine
    return gfns[0], gfns[1]


def _energy(variant: str):
    return ManyWell(10) if variant == "fixed_var" else GMM9()


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("engine", ENGINES)
def test_sampling_without_autograd_equals_the_reference_engine(engine, variant):
    fast, ref = _pair(engine, _energy(variant), **VARIANTS[variant])
    with torch.no_grad():
        a = fast.rollout_forward(37, exploration_std=0.3, generator=torch.Generator().manual_seed(5))
        b = ref.rollout_forward(37, exploration_std=0.3, generator=torch.Generator().manual_seed(5))
        # the same noise stream, the same steps (float32 rounding, amplified a little along the trajectory)
        torch.testing.assert_close(a.states, b.states, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(a.log_pf, b.log_pf, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(a.log_pb, b.log_pb, rtol=1e-4, atol=1e-3)
        assert a.log_pf.abs().max() > 1.0  # not a trivially zero density
        x = a.states[:, -1]
        a = fast.rollout_backward(x, generator=torch.Generator().manual_seed(8))
        b = ref.rollout_backward(x, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(a.states, b.states, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.log_pf, b.log_pf, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(a.log_pb, b.log_pb, rtol=1e-4, atol=1e-3)
    if a.log_flow is not None:
        torch.testing.assert_close(a.log_flow, b.log_flow, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("engine", ENGINES)
def test_losses_and_every_gradient_equal_the_reference_engine(engine, direction, variant):
    # B·T = 330 rows: more than one 256-row tile of the native backward pass, a tile boundary inside a step
    energy = _energy(variant)
    fast, ref = _pair(engine, energy, T=11, **VARIANTS[variant])
    x = energy.sample(30, generator=torch.Generator().manual_seed(4))
    results = []
    for gfn in (fast, ref):
        traj, loss = weighted_rollout_loss(gfn, direction, x, seed=6)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in gfn.named_parameters() if p.grad is not None}
        flow = traj.log_flow.detach() if traj.log_flow is not None else None
        results.append((traj.states.detach(), traj.log_pf.detach(), traj.log_pb.detach(), flow, grads))
    (s_a, pf_a, pb_a, f_a, g_a), (s_b, pf_b, pb_b, f_b, g_b) = results
    torch.testing.assert_close(s_a, s_b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pf_a, pf_b, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(pb_a, pb_b, rtol=1e-4, atol=1e-3)
    if f_b is not None:
        torch.testing.assert_close(f_a, f_b, rtol=1e-4, atol=1e-3)
    assert g_a.keys() == g_b.keys() and len(g_b) == len([p for p in ref.parameters() if p.requires_grad])
    for name in g_b:
        scale = g_b[name].abs().max().clamp(min=1.0)
        torch.testing.assert_close(g_a[name] / scale, g_b[name] / scale, rtol=1e-4, atol=1e-4, msg=name)
    assert any(g.abs().max() > 0 for n, g in g_b.items() if n.startswith("policy.time_net"))


@pytest.mark.parametrize("engine", ENGINES)
def test_the_reparameterised_rollout_is_the_same_on_every_engine(engine):
    # PIS differentiates through the states: the chain is the reference engine's on every engine.
    fast, ref = _pair(engine, GMM9(), langevin=True)
    losses = []
    for gfn in (fast, ref):
        traj = gfn.rollout_forward(20, generator=torch.Generator().manual_seed(1), reparam=True)
        (traj.log_pf.sum() - traj.log_reward.sum()).backward()
        losses.append(torch.cat([p.grad.flatten() for p in gfn.policy.parameters()]))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------- what runs where
class _NormedNet(StateTimeNet):
    """A StateTimeNet subclass with its own forward: the accelerated engines must not take it."""

    def forward(self, s, t_emb):
        return self.out(self.joint(torch.tanh(self.state_net(s)) + t_emb))


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"layer_norm": True}, "the policy uses LayerNorm in its joint layers"),
        ({"activation": "silu"}, "the policy uses SiLU in its joint layers"),
        ({"policy": lambda dim, out_dim: _NormedNet(dim, out_dim, hidden_dim=8)}, "is a _NormedNet, not a"),
        ({"learn_pb": True, "activation": "tanh"}, "uses Tanh in its joint layers"),
    ],
    ids=["layer_norm", "silu", "subclass", "tanh_pb"],
)
def test_models_the_accelerated_engines_do_not_implement_run_on_the_reference_engine(options, reason, caplog):
    pytest.importorskip("sampler.gfn.accelerators")
    with caplog.at_level(logging.INFO, logger="sampler.gfn.diffusion"):
        gfn = DiffusionGFN(GMM9(), T=6, hidden_dim=8, **options)
    assert type(gfn.engine) is ReferenceEngine
    lines = [r.getMessage() for r in caplog.records if "model.engine=auto" in r.getMessage()]
    assert len(lines) == 1 and "using the reference engine" in lines[0] and reason in lines[0]
    for engine in ("fused", "native"):
        with pytest.raises(ValueError, match=f"model.engine={engine} cannot run this model: .*{reason}"):
            DiffusionGFN(GMM9(), T=6, hidden_dim=8, engine=engine, **options)


def test_a_plain_model_takes_the_accelerated_engine_on_auto():
    pytest.importorskip("sampler.gfn.accelerators")
    from sampler.gfn.accelerators.fused import AcceleratedEngine  # noqa: PLC0415

    assert isinstance(DiffusionGFN(GMM9(), T=6, hidden_dim=8).engine, AcceleratedEngine)
    assert DiffusionGFN(GMM9(), T=6, hidden_dim=8, engine="fused").engine.name == "fused"


def test_an_engine_native_config_error_is_one_line(tiny_cfg):
    with pytest.raises(
        ConfigError,
        match=r"^model could not be built: ValueError: model.engine=native cannot run this model: the policy uses",
    ):
        build_gfn(tiny_cfg("model.engine=native", "model.layer_norm=true"), GMM9())


def test_a_saved_config_with_the_older_native_key_still_builds_its_engine():
    pytest.importorskip("sampler.gfn.accelerators")
    assert DiffusionGFN(GMM9(), T=6, hidden_dim=8, native=False).engine.name == "fused"
    assert DiffusionGFN(GMM9(), T=6, hidden_dim=8, native="auto").engine.name == "auto"
    with pytest.raises(ValueError, match="model.native must be one of auto, true, false"):
        DiffusionGFN(GMM9(), T=6, hidden_dim=8, native="maybe")


def test_a_custom_policy_without_the_documented_methods_is_one_clear_error():
    with pytest.raises(ValueError, match=r"model.policy \(Linear\) has no embed_time\(\)"):
        DiffusionGFN(GMM9(), T=6, policy=nn.Linear(2, 4))


@pytest.mark.parametrize("options", [["model.layer_norm=true"], ["model.activation=silu"]], ids=["layernorm", "silu"])
def test_a_model_with_a_layernorm_or_silu_trains_on_auto_through_the_reference_engine(options, tiny_cfg):
    from sampler.training.module import SamplerModule  # noqa: PLC0415

    module = SamplerModule(tiny_cfg("energy=gmm9", *options))
    assert type(module.gfn.engine) is ReferenceEngine
    before = {n: p.detach().clone() for n, p in module.gfn.named_parameters()}
    opt = module.configure_optimizers()
    opt = opt[0] if isinstance(opt, list) else opt
    losses = [float(module.train_step(step, opt)) for step in range(30)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) < sum(losses[:5])  # it learns
    changed = [n for n, p in module.gfn.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert any("joint" in n for n in changed)
    if "layer_norm" in options[0]:
        assert any(isinstance(m, nn.LayerNorm) for m in module.gfn.policy.joint)


def test_without_the_accelerators_package_every_model_runs_on_the_reference_engine(tmp_path):
    # Deleting sampler/gfn/accelerators must leave a working sampler: a copy of the package without it trains.
    import shutil  # noqa: PLC0415

    shutil.copytree(
        REPO / "sampler", tmp_path / "sampler", ignore=shutil.ignore_patterns("accelerators", "__pycache__")
    )
    code = (
        "import logging, torch\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from sampler.energies import GMM9\n"
        "from sampler.gfn import DiffusionGFN\n"
        "from sampler.losses import trajectory_balance\n"
        "gfn = DiffusionGFN(GMM9(), T=8, hidden_dim=16)\n"
        "assert type(gfn.engine).__name__ == 'ReferenceEngine', gfn.engine\n"
        "traj = gfn.rollout_forward(32, exploration_std=0.1, generator=torch.Generator().manual_seed(0))\n"
        "trajectory_balance(traj).mean().backward()\n"
        "assert gfn.log_Z.grad is not None\n"
        "try:\n"
        "    DiffusionGFN(GMM9(), T=8, engine='native')\n"
        "except ValueError as err:\n"
        "    print('ERR', err)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "the accelerated engines are not installed; using the reference engine" in out.stderr
    assert "ERR model.engine=native: the accelerated engines are not installed" in out.stdout

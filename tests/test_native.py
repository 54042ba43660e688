"""The native CPU kernels (sampler/gfn/native/rollout.cpp) against the PyTorch path they replace.

Each test runs the same computation twice — ``native="true"`` (the kernels must build here: a failed build fails
the test rather than skipping it) and ``native="false"`` — and compares states, log-densities, recordings and
every gradient. Two intra-op threads, batch sizes that do not split evenly and more rows than one backward tile,
so that the per-thread row chunks, the recorded pass's (step, chunk) split and the tiled backward's per-step
time-bias sums are all exercised.
"""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import weighted_rollout_loss

from sampler.energies import GMM9, ManyWell
from sampler.gfn import DiffusionGFN, native, nets
from sampler.losses import trajectory_balance
from sampler.training.config_check import ConfigError
from sampler.training.module import build_gfn

VARIANTS = {
    "learned_var": {},
    "fixed_var": {"learned_variance": False},
    "lp": {"langevin": True},
    "lp_per_dim_no_clip": {"langevin": True, "langevin_per_dim": True, "clipping": False},
    "mlp": {"arch": "mlp"},
    "1_layer": {"num_layers": 1},
    "3_layers_fl_pb": {"num_layers": 3, "flow": "forward_looking", "learn_pb": True},
    "tight_out_clip": {"out_clip": 0.3},
}


@pytest.fixture(autouse=True)
def two_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


def _pair(energy, T: int = 12, hidden_dim: int = 16, **options) -> tuple[DiffusionGFN, DiffusionGFN]:
    """Two GFNs with the same weights, the first on the native kernels, the second on PyTorch."""
    gfns = []
    for mode in ("true", "false"):
        torch.manual_seed(3)
        gfns.append(
            DiffusionGFN(energy, T=T, t_scale=2.0, hidden_dim=hidden_dim, zero_init=False, native=mode, **options)
        )
    return gfns[0], gfns[1]


def _energy(variant: str):
    return ManyWell(10) if variant == "fixed_var" else GMM9()  # d = 10: 8-lane blocks plus a scalar tail


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_native_sampling_loop_takes_the_pytorch_steps(variant):
    fast, ref = _pair(_energy(variant), **VARIANTS[variant])
    with torch.no_grad():
        a = fast.rollout_forward(37, exploration_std=0.3, generator=torch.Generator().manual_seed(5))
        b = ref.rollout_forward(37, exploration_std=0.3, generator=torch.Generator().manual_seed(5))
    # the same noise stream, the same steps (float32 rounding, amplified a little along the trajectory)
    torch.testing.assert_close(a.states, b.states, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.log_pf, b.log_pf, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(a.log_pb, b.log_pb, rtol=1e-4, atol=1e-3)
    assert a.log_pf.abs().max() > 1.0  # not a trivially zero density
    # without autograd, backward trajectories (the evaluation's EUBO) run the network natively over all steps
    x = a.states[:, -1]
    with torch.no_grad():
        a = fast.rollout_backward(x, generator=torch.Generator().manual_seed(8))
        b = ref.rollout_backward(x, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(a.log_pf, b.log_pf, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(a.log_pb, b.log_pb, rtol=1e-4, atol=1e-3)
    if a.log_flow is not None:
        torch.testing.assert_close(a.log_flow, b.log_flow, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_native_losses_and_gradients_equal_pytorch(variant, direction):
    # B·T = 330 rows: more than one 256-row tile of the backward pass, with a tile boundary inside a step
    energy = _energy(variant)
    fast, ref = _pair(energy, T=11, **VARIANTS[variant])
    x = energy.sample(30, generator=torch.Generator().manual_seed(4))
    results = []
    for gfn in (fast, ref):
        traj, loss = weighted_rollout_loss(gfn, direction, x, seed=6)
        loss.backward()
        results.append(
            (traj.log_pf.detach(), {n: p.grad.clone() for n, p in gfn.named_parameters() if p.grad is not None})
        )
    (lp_a, g_a), (lp_b, g_b) = results
    torch.testing.assert_close(lp_a, lp_b, rtol=1e-4, atol=1e-3)
    assert g_a.keys() == g_b.keys()
    for name in g_b:
        scale = g_b[name].abs().max().clamp(min=1.0)
        torch.testing.assert_close(g_a[name] / scale, g_b[name] / scale, rtol=1e-4, atol=1e-4, msg=name)
    assert any(g.abs().max() > 0 for n, g in g_b.items() if n.startswith("policy.time_net"))


def test_the_native_recording_is_the_layers_of_the_policy():
    # The recorded pass of sampled states (backward trajectories, flows) writes every layer as the network computes it.
    fast, ref = _pair(ManyWell(10), num_layers=2)
    states = torch.randn(12, 300, 10)  # 300 rows per step: three row chunks of the recorded pass
    t_emb = fast.policy.embed_time(fast.times[:12]).detach()
    tapes = []
    for gfn, kernels in ((fast, native.load(required=True)), (ref, None)):
        with torch.no_grad():
            out = gfn.policy(states, t_emb[:, None])
        raw = gfn.policy.batched(states, t_emb[:, None], kernels)
        torch.testing.assert_close(raw.detach(), out, rtol=1e-5, atol=1e-5)
        tape = nets._TAPE_POOLS[gfn.policy][-1]
        tapes.append((tape.z.clone(), tape.h.clone()))
    torch.testing.assert_close(tapes[0][0], tapes[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tapes[0][1], tapes[1][1], rtol=1e-5, atol=1e-5)


def test_a_tape_still_needed_by_a_graph_is_not_reused():
    # Recordings are pooled; a second rollout before the first one's backward must record elsewhere.
    energy = GMM9()
    torch.manual_seed(0)
    gfn = DiffusionGFN(energy, T=8, t_scale=5.0, hidden_dim=16, zero_init=False, native="true")
    first = gfn.rollout_forward(40, generator=torch.Generator().manual_seed(0))
    trajectory_balance(first).mean().backward(retain_graph=True)
    expected = [p.grad.clone() for p in gfn.policy.parameters()]
    gfn.zero_grad()
    second = gfn.rollout_forward(40, generator=torch.Generator().manual_seed(1))  # must not overwrite first's tape
    trajectory_balance(first).mean().backward()
    for p, g in zip(gfn.policy.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g)
    del first
    third = gfn.rollout_forward(40, generator=torch.Generator().manual_seed(2))
    assert len(nets._TAPE_POOLS[gfn.policy]) == 2 and second is not third  # the first tape was free again


def test_auto_falls_back_to_pytorch_with_one_warning_when_the_kernels_cannot_build(monkeypatch, caplog):
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_error", None)

    def broken():
        raise OSError("no C++ compiler")

    monkeypatch.setattr(native, "_build", broken)
    with caplog.at_level(logging.WARNING, logger="sampler.gfn.native"):
        gfn = DiffusionGFN(GMM9(), T=6, hidden_dim=8)
        gfn.rollout_forward(8, generator=torch.Generator().manual_seed(0))
        gfn.rollout_forward(8, generator=torch.Generator().manual_seed(1))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no C++ compiler" in warnings[0] and "PyTorch path" in warnings[0]
    assert gfn._kernels(torch.zeros(1)) is None


def test_model_native_true_without_kernels_is_one_clear_config_error(monkeypatch, tiny_cfg):
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_error", "OSError: no C++ compiler")
    cfg = tiny_cfg("model.native=true")
    with pytest.raises(ConfigError, match="model.native=true, but the native kernels could not be built: OSError"):
        build_gfn(cfg, GMM9())


def test_model_native_rejects_other_values(tiny_cfg):
    with pytest.raises(ConfigError, match="model.native must be one of auto, true, false"):
        build_gfn(tiny_cfg("model.native=maybe"), GMM9())


def test_model_native_false_never_calls_the_kernels(monkeypatch):
    gfn = DiffusionGFN(GMM9(), T=6, hidden_dim=8, native="false")
    monkeypatch.setattr(native, "load", lambda *a, **k: pytest.fail("native kernels used with native=false"))
    traj = gfn.rollout_forward(8, generator=torch.Generator().manual_seed(0))
    trajectory_balance(traj).mean().backward()
    gfn.rollout_backward(traj.states[:, -1].detach(), generator=torch.Generator().manual_seed(0))

"""The native CPU kernels (sampler/gfn/accelerators/csrc/rollout.cpp) against the fused PyTorch path they replace.

The recordings, the tape pool, the build fallback and the engine switches; the engines' states, log-densities and
gradients against the reference engine are in tests/test_engines.py. Two intra-op threads and more rows than one
chunk, so that the per-thread row chunks of the recorded pass are exercised.
"""

from __future__ import annotations

import logging

import pytest
import torch

from sampler.energies import GMM9, ManyWell
from sampler.gfn import DiffusionGFN
from sampler.losses import trajectory_balance
from sampler.training.config_check import ConfigError
from sampler.training.module import build_gfn

fused = pytest.importorskip("sampler.gfn.accelerators.fused")
native = pytest.importorskip("sampler.gfn.accelerators.native")


@pytest.fixture(autouse=True)
def two_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


def _pair(energy, T: int = 12, hidden_dim: int = 16, **options) -> tuple[DiffusionGFN, DiffusionGFN]:
    """Two GFNs with the same weights, the first on the native kernels, the second on the fused PyTorch path."""
    gfns = []
    for mode in ("native", "fused"):
        torch.manual_seed(3)
        gfns.append(
            DiffusionGFN(energy, T=T, t_scale=2.0, hidden_dim=hidden_dim, zero_init=False, engine=mode, **options)
        )
    return gfns[0], gfns[1]


def test_the_native_recording_is_the_layers_of_the_policy():
    # The recorded pass of sampled states (backward trajectories, flows) writes every layer as the network computes it.
    fast, ref = _pair(ManyWell(10), num_layers=2)
    states = torch.randn(12, 300, 10)  # 300 rows per step: three row chunks of the recorded pass
    t_emb = fast.policy.embed_time(fast.times[:12]).detach()
    tapes = []
    for gfn, kernels in ((fast, native.load(required=True)), (ref, None)):
        with torch.no_grad():
            out = gfn.policy(states, t_emb[:, None])
        raw = fused.batched(gfn.policy, states, t_emb[:, None], kernels)
        torch.testing.assert_close(raw.detach(), out, rtol=1e-5, atol=1e-5)
        tape = fused._TAPE_POOLS[gfn.policy][-1]
        tapes.append((tape.z.clone(), tape.h.clone()))
    torch.testing.assert_close(tapes[0][0], tapes[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tapes[0][1], tapes[1][1], rtol=1e-5, atol=1e-5)


def test_a_tape_still_needed_by_a_graph_is_not_reused():
    # Recordings are pooled; a second rollout before the first one's backward must record elsewhere.
    energy = GMM9()
    torch.manual_seed(0)
    gfn = DiffusionGFN(energy, T=8, t_scale=5.0, hidden_dim=16, zero_init=False, engine="native")
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
    assert len(fused._TAPE_POOLS[gfn.policy]) == 2 and second is not third  # the first tape was free again


def test_auto_falls_back_to_pytorch_with_one_warning_when_the_kernels_cannot_build(monkeypatch, caplog):
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_error", None)

    def broken():
        raise OSError("no C++ compiler")

    monkeypatch.setattr(native, "_build", broken)
    with caplog.at_level(logging.WARNING, logger="sampler.gfn.accelerators.native"):
        gfn = DiffusionGFN(GMM9(), T=6, hidden_dim=8)
        gfn.rollout_forward(8, generator=torch.Generator().manual_seed(0))
        gfn.rollout_forward(8, generator=torch.Generator().manual_seed(1))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no C++ compiler" in warnings[0] and "PyTorch path" in warnings[0]
    assert gfn.engine.kernels(torch.zeros(1)) is None


def test_model_engine_native_without_kernels_is_one_clear_config_error(monkeypatch, tiny_cfg):
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_error", "OSError: no C++ compiler")
    cfg = tiny_cfg("model.engine=native")
    with pytest.raises(ConfigError, match="model.engine=native, but the native kernels could not be built: OSError"):
        build_gfn(cfg, GMM9())


def test_model_engine_rejects_other_values(tiny_cfg):
    with pytest.raises(ConfigError, match="model.engine must be one of auto, reference, fused, native"):
        build_gfn(tiny_cfg("model.engine=maybe"), GMM9())


def test_model_engine_fused_never_calls_the_kernels(monkeypatch):
    gfn = DiffusionGFN(GMM9(), T=6, hidden_dim=8, engine="fused")
    monkeypatch.setattr(native, "load", lambda *a, **k: pytest.fail("native kernels used with engine=fused"))
    traj = gfn.rollout_forward(8, generator=torch.Generator().manual_seed(0))
    trajectory_balance(traj).mean().backward()
    gfn.rollout_backward(traj.states[:, -1].detach(), generator=torch.Generator().manual_seed(0))

"""Optional accelerated engines of the diffusion sampler (docs/design.md "Engines", docs/performance.md).

``model.engine`` chooses how rollouts are computed:

* ``reference`` — :mod:`sampler.gfn.reference`, plain autograd, any policy network;
* ``fused`` — :class:`~sampler.gfn.accelerators.fused.AcceleratedEngine` without native code: a fused sampling
  loop, recorded network passes and hand-written backward passes, in PyTorch;
* ``native`` — the same with the C++ kernels (:mod:`sampler.gfn.accelerators.native`) on CPU float32 tensors;
  the kernels must build;
* ``auto`` (default) — ``native`` where the kernels build, else ``fused``, for the models :func:`supports` accepts;
  ``reference`` (with one log line saying why) for every other model.

The accelerated engines implement exactly one network family — a :class:`~sampler.gfn.nets.StateTimeNet` whose state
path is Linear layers with exact GELU between them — for the policy, the state flow and the learned backward
corrections. :func:`supports` checks that, so a network changed in any way (a LayerNorm, another activation, a
subclass with its own ``forward``) runs on the reference engine instead of being silently miscomputed. This package
is optional: without it every model runs on the reference engine, slower, with the same results to float rounding.
"""

from __future__ import annotations

from torch import nn

from sampler.gfn.nets import StateTimeNet


def supports(gfn) -> str | None:
    """Whether the accelerated engines implement ``gfn`` exactly.

    Args:
        gfn: a :class:`~sampler.gfn.DiffusionGFN`.

    Returns:
        ``None`` when they do, else the reason they do not (one phrase, for a log line or an error).
    """
    if getattr(gfn, "compiled", False):
        return "model.compile=true runs the policy through torch.compile"
    for role, net in (("policy", gfn.policy), ("state flow", gfn.flow_net), ("backward network", gfn.pb_net)):
        if net is None:
            continue
        reason = _plain_network(net)
        if reason is not None:
            return f"the {role} {reason}"
    return None


def _plain_network(net: nn.Module) -> str | None:
    """None for a StateTimeNet of Linear layers and exact GELUs (what the fused loop, the tape and the kernels
    compute), else what differs."""
    if type(net) is not StateTimeNet:
        return f"is a {type(net).__name__}, not a StateTimeNet"
    if type(net.state_net) is not nn.Linear or type(net.out) is not nn.Linear:
        return "has a state embedding or output layer other than nn.Linear"
    layers = list(net.joint)
    for module in layers:
        if type(module) not in (nn.Linear, nn.GELU):
            return f"uses {type(module).__name__} in its joint layers, which the accelerated engines do not implement"
        if type(module) is nn.GELU and not _is_gelu(module):
            return f"uses GELU(approximate={module.approximate!r}); the accelerated engines implement exact GELU"
    kinds = [type(m) for m in layers]
    if kinds != [nn.GELU] + [nn.Linear, nn.GELU] * ((len(kinds) - 1) // 2) or any(
        m.bias is None for m in layers if type(m) is nn.Linear
    ):
        return "has joint layers other than GELU, then [Linear with bias, GELU] pairs"
    return None


def _is_gelu(module: nn.Module) -> bool:
    return type(module) is nn.GELU and module.approximate == "none"

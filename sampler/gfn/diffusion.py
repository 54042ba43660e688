"""The diffusion sampler as a GFlowNet (Sendera et al. 2024, https://arxiv.org/abs/2402.05098; docs/spec.md §2).

The forward process starts at s_0 = 0 and takes T Gaussian steps
``P_F(s_{i+1}|s_i) = N(s_i + dt·μ_θ(s_i, t_i), dt·σ²·e^{v_θ}·I)``; the backward process is the Brownian
bridge of a σ²-Brownian motion pinned at 0, optionally with learned corrections.

:class:`DiffusionGFN` holds the networks and their parameter groups; the step formulas are in
:mod:`sampler.gfn.heads`, and the rollouts in an *engine* (``model.engine``): the reference engine
(:mod:`sampler.gfn.reference`, plain autograd, any policy network) or, for the networks they implement, the
accelerated ones (:mod:`sampler.gfn.accelerators`), which compute the same trajectories faster.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from sampler.energies.base import Energy, resolve_t_scale
from sampler.gfn.heads import BridgeHead, ForwardHead
from sampler.gfn.nets import StateTimeNet, TimeScaleNet
from sampler.gfn.reference import ReferenceEngine
from sampler.gfn.trajectories import Trajectories

log = logging.getLogger(__name__)

FLOWS = ("scalar", "conditional", "forward_looking")
ENGINES = ("auto", "reference", "fused", "native")


class DiffusionGFN(nn.Module):
    """Diffusion-based GFlowNet sampler of a continuous target.

    Args:
        energy: the target (kept as a plain attribute, not a sub-module: its parameters are never trained here).
        T: number of steps; dt = 1/T.
        t_scale: σ², the diffusion coefficient of the reference Brownian motion; ``None``: the energy's declared
            ``t_scale`` (1.0 when it declares none, with one log line).
        arch: ``pis`` or ``mlp`` (see :class:`StateTimeNet`).
        hidden_dim, num_layers, zero_init: policy/flow network shape; zero_init zeroes the last layer.
        activation, layer_norm: the joint layers' nonlinearity and an optional LayerNorm (see :class:`StateTimeNet`;
            anything but ``gelu`` without LayerNorm runs on the reference engine).
        policy: a policy network to use instead of the built one: an ``nn.Module`` with ``embed_time(t [T]) -> [T, H]``
            and ``forward(s [..., B, d], t_emb [..., 1, H]) -> [..., B, out]`` where out = 2d with
            ``learned_variance`` (drift, then log-variance), else d; or a callable ``(dim, out_dim) -> module`` (e.g. a
            Hydra ``_partial_``). It runs on the reference engine unless it is a plain :class:`StateTimeNet`.
        learned_variance: learn v = log_var_range·tanh(v_raw); else v = 0.
        log_var_range: range of the learned log-variance multiplier.
        langevin: Langevin parametrisation μ = NN(s, t) + g(t)·clip(∇log r(s)).
        langevin_per_dim: g(t) per dimension instead of a scalar.
        lgv_layers: layers of g(t)'s network before its output layer (see :class:`TimeScaleNet`).
        lgv_clip: clip of ∇log r; out_clip: clip of the raw policy output; both only when ``clipping``.
        learn_pb: learn the backward corrections with range ``pb_scale_range``.
        flow: ``scalar`` (log Z), ``conditional`` (log F_θ(s, t)) or ``forward_looking``.
        flow_shares_embeddings: the state-flow network is a head (joint layers + last layer) on the policy's time
            and state embeddings, as in Sendera et al.'s code: the flow objective's gradient then also trains those
            embeddings, which stay in :meth:`policy_parameters`; :meth:`flow_parameters` is the head. Else the flow
            is a network of its own. Ignored with the scalar flow.
        flow_zero_init: zero the flow network's last layer; ``None``: as ``zero_init`` (Sendera et al.'s code
            leaves it at PyTorch's default initialisation).
        log_Z_init: initial value of the scalar log Z.
        compile: run the policy network through ``torch.compile`` (same parameters and state dict; the first
            steps pay the compilation; runs on the reference engine).
        engine: how rollouts are computed — ``auto | reference | fused | native`` (:mod:`sampler.gfn.accelerators`).
        native: the older spelling of ``engine`` (``true`` → native, ``false`` → fused, ``auto``), accepted so that
            configs saved before ``engine`` existed still build; ``None`` when ``engine`` is used.
    """

    def __init__(
        self,
        energy: Energy,
        T: int = 100,
        t_scale: float | None = None,
        arch: str = "pis",
        hidden_dim: int = 64,
        num_layers: int = 2,
        zero_init: bool = True,
        activation: str = "gelu",
        layer_norm: bool = False,
        policy: nn.Module | Callable[..., nn.Module] | None = None,
        learned_variance: bool = True,
        log_var_range: float = 4.0,
        langevin: bool = False,
        langevin_per_dim: bool = False,
        lgv_layers: int = 2,
        clipping: bool = True,
        lgv_clip: float = 100.0,
        out_clip: float = 1e4,
        learn_pb: bool = False,
        pb_scale_range: float = 0.1,
        flow: str = "scalar",
        flow_shares_embeddings: bool = False,
        flow_zero_init: bool | None = None,
        log_Z_init: float = 0.0,
        compile: bool = False,
        engine: str = "auto",
        native: str | bool | None = None,
    ):
        super().__init__()
        if flow not in FLOWS:
            raise ValueError(f"model.flow must be one of {', '.join(FLOWS)} (got {flow})")
        object.__setattr__(self, "energy", energy)  # not registered: its state is not ours
        d = energy.dim
        self.dim, self.T, self.dt = d, int(T), 1.0 / T
        self.t_scale = resolve_t_scale(t_scale, energy)
        self.learned_variance, self.log_var_range = learned_variance, float(log_var_range)
        self.langevin, self.clipping = langevin, clipping
        self.lgv_clip, self.out_clip = float(lgv_clip), float(out_clip)
        self.learn_pb, self.pb_scale_range = learn_pb, float(pb_scale_range)
        self.flow_type = flow
        self.flow_shares_embeddings = bool(flow_shares_embeddings) and flow != "scalar"
        self.head = ForwardHead(
            d, self.dt, self.t_scale, learned_variance, self.log_var_range, langevin, clipping, self.lgv_clip,
            self.out_clip,
        )  # fmt: skip
        self.bridge = BridgeHead(d, self.dt, self.t_scale, self.pb_scale_range)

        out = self.head.out_dim
        net_kw = {"activation": activation, "layer_norm": layer_norm}
        if policy is None:
            self.policy = StateTimeNet(d, out, arch, hidden_dim, num_layers, zero_init, **net_kw)
        else:
            self.policy = policy if isinstance(policy, nn.Module) else policy(dim=d, out_dim=out)
            _check_policy(self.policy)
        self.lgv_scale = TimeScaleNet(d if langevin_per_dim else 1, hidden_dim, lgv_layers) if langevin else None
        self.pb_net = StateTimeNet(d, 2 * d, arch, hidden_dim, num_layers, True, **net_kw) if learn_pb else None
        if flow == "scalar":
            self.log_Z = nn.Parameter(torch.tensor(float(log_Z_init)))
            self.flow_net = None
        else:
            self.log_Z = None
            flow_zero = zero_init if flow_zero_init is None else flow_zero_init
            shared = self.policy if self.flow_shares_embeddings else None
            self.flow_net = StateTimeNet(d, 1, arch, hidden_dim, num_layers, flow_zero, shared=shared, **net_kw)
        self.register_buffer("times", torch.arange(self.T + 1, dtype=torch.float32) / self.T, persistent=False)
        # Not a registered sub-module: the compiled wrapper shares the policy's parameters and adds no state.
        object.__setattr__(self, "_compiled_policy", torch.compile(self.policy, dynamic=False) if compile else None)
        object.__setattr__(self, "engine", select_engine(self, _engine_mode(engine, native)))

    @property
    def compiled(self) -> bool:
        """Whether the policy runs through ``torch.compile``."""
        return self._compiled_policy is not None

    @property
    def policy_fn(self) -> nn.Module:
        """The policy as the engines call it: compiled when ``compile`` is on."""
        return self._compiled_policy if self._compiled_policy is not None else self.policy

    # ----------------------------------------------------------------------------------------------- parameters
    def policy_parameters(self) -> list[nn.Parameter]:
        """The policy network (with the embeddings a shared-embedding flow also uses) and g(t): lr_policy."""
        ps = list(self.policy.parameters())
        return ps + (list(self.lgv_scale.parameters()) if self.lgv_scale is not None else [])

    def flow_parameters(self) -> list[nn.Parameter]:
        """log Z, or the state-flow network's own parameters (only its head when it shares embeddings): lr_flow."""
        return [self.log_Z] if self.log_Z is not None else list(self.flow_net.parameters())

    def backward_parameters(self) -> list[nn.Parameter]:
        """The learned backward corrections (``learn_pb``): lr_back."""
        return list(self.pb_net.parameters()) if self.pb_net is not None else []

    # ------------------------------------------------------------------------------------------------ rollouts
    def rollout_forward(
        self,
        n: int,
        exploration_std: float | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        reparam: bool = False,
    ) -> Trajectories:
        """Sample ``n`` forward trajectories.

        Args:
            n: batch size B.
            exploration_std: ε, extra per-step noise std added in quadrature (sampling only).
            generator: source of all sampling noise.
            reparam: keep the gradient through the sampled states (PIS objective); otherwise states are sampled
                without autograd and log P_F is evaluated afterwards with gradients.

        Returns:
            Trajectories with states ``[B, T+1, d]``.
        """
        return self.engine.rollout_forward(self, n, exploration_std, generator, reparam)

    def rollout_backward(
        self, x: torch.Tensor, generator: torch.Generator | None = None, log_reward: torch.Tensor | None = None
    ) -> Trajectories:
        """Sample backward (Brownian-bridge) trajectories ending at ``x [B, d]`` (a trailing extra column, as in
        torchgfn's ``(B, d+1)`` states, is dropped).

        Args:
            x: terminal states.
            generator: source of the bridge's noise.
            log_reward: log r(x) to use instead of the energy's (e.g. the teacher's own reward).

        Returns:
            Trajectories with ``states[:, -1] == x`` and ``states[:, 0] == 0``; log P_F and log P_B carry
            gradients for the policy, flow and backward networks.
        """
        d = self.dim
        x = x.detach()
        if x.shape[-1] == d + 1:
            x = x[..., :d]
        if x.dim() != 2 or x.shape[-1] != d:
            raise ValueError(f"rollout_backward expects terminal states of shape [B, {d}] (got {tuple(x.shape)})")
        return self.engine.rollout_backward(self, x.to(self.times.device), generator, log_reward)


# ---------------------------------------------------------------------------------------------------- engines
def _engine_mode(engine: str, native) -> str:
    """``model.engine``, or the engine an older config's ``model.native`` meant."""
    if native is not None:
        legacy = {True: "native", False: "fused"}.get(native, str(native).lower())
        legacy = {"true": "native", "false": "fused"}.get(legacy, legacy)
        if legacy not in ("auto", "native", "fused"):
            raise ValueError(f"model.native must be one of auto, true, false (got {native})")
        return legacy
    mode = str(engine).lower()
    if mode not in ENGINES:
        raise ValueError(f"model.engine must be one of {', '.join(ENGINES)} (got {engine})")
    return mode


def select_engine(gfn: DiffusionGFN, mode: str = "auto"):
    """The engine that computes ``gfn``'s rollouts for ``model.engine=mode``.

    ``auto`` takes the accelerated engine (native kernels where they build) when it implements the model exactly,
    else the reference engine with one log line saying why; ``fused`` and ``native`` on a model they do not implement
    are an error naming the reason.

    Raises:
        ValueError: ``fused`` / ``native`` asked for a model or an installation they cannot serve.
    """
    if mode == "reference":
        return ReferenceEngine()
    try:
        from sampler.gfn import accelerators  # noqa: PLC0415 - optional: the reference engine needs none of it
        from sampler.gfn.accelerators.fused import AcceleratedEngine  # noqa: PLC0415
    except ImportError as err:
        if mode != "auto":
            raise ValueError(
                f"model.engine={mode}: the accelerated engines are not installed ({err}); use model.engine=reference"
            ) from err
        log.info("model.engine=auto: the accelerated engines are not installed; using the reference engine")
        return ReferenceEngine()
    reason = accelerators.supports(gfn)
    if reason is not None:
        if mode != "auto":
            raise ValueError(
                f"model.engine={mode} cannot run this model: {reason}; use model.engine=auto or model.engine=reference"
            )
        log.info("model.engine=auto: using the reference engine (%s)", reason)
        return ReferenceEngine()
    return AcceleratedEngine({"auto": "auto", "fused": "false", "native": "true"}[mode])


def _check_policy(policy: nn.Module) -> None:
    """A custom policy must have the two methods the engines call (one clear line when it has not)."""
    for method in ("embed_time", "forward"):
        if not callable(getattr(policy, method, None)):
            raise ValueError(
                f"model.policy ({type(policy).__name__}) has no {method}(): a policy needs embed_time(t [T]) -> [T, H] "
                "and forward(s [..., B, d], t_emb [..., 1, H]) -> [..., B, out] (see docs/design.md, engines)"
            )

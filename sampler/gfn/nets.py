"""Policy, flow and Langevin-scaling networks of the diffusion sampler (docs/spec.md §2).

Every network splits into a *time* part, evaluated once for a whole grid of times ``[T, H]``, and a *state*
part evaluated on ``[..., B, d]`` states, so a rollout never embeds the same time B times.
"""

from __future__ import annotations

import torch
from torch import nn

from sampler.gfn.heads import gaussian_log_prob  # noqa: F401 - its home before heads.py; kept importable

#: ``model.activation`` choices of :class:`StateTimeNet` (the accelerated engines implement ``gelu`` only).
ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}


class HarmonicTimeFeatures(nn.Module):
    """PIS time features ``[sin(f·t + φ), cos(f·t + φ)]`` with f = linspace(0.1, 100, n) and learned phase φ."""

    def __init__(self, n_harmonics: int = 64):
        super().__init__()
        self.register_buffer("freqs", torch.linspace(0.1, 100.0, n_harmonics))
        self.phase = nn.Parameter(torch.randn(n_harmonics))
        self.out_dim = 2 * n_harmonics

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = t[:, None] * self.freqs + self.phase  # [T, n]
        return torch.cat([arg.sin(), arg.cos()], dim=-1)  # [T, 2n]


class StateTimeNet(nn.Module):
    """f(s, t) → R^out, split as ``embed_time(t) [T, H]`` once, then ``forward(s, t_emb)``.

    Architectures:
        ``pis``: t ↦ Linear(128, H) → GELU → Linear(H, H); s ↦ Linear(d, H); (s_emb + t_emb) → GELU →
            num_layers × [Linear(H, H) → GELU] → Linear(H, out)   (Zhang & Chen 2022, as in Sendera et al.)
        ``mlp``: a plain MLP on the concatenation [s, time features]: Linear(d + 128, H) → GELU →
            num_layers × [Linear(H, H) → GELU] → Linear(H, out). (The concatenation is computed as the sum of
            the state and time halves of the first layer, so the time half is still evaluated once per time.)

    Args:
        dim: state dimension d.
        out_dim: output size.
        arch: ``pis`` or ``mlp`` (above).
        hidden_dim: width H.
        num_layers: hidden H → H layers of the joint part.
        zero_init: zero the last layer (else PyTorch's default initialisation).
        activation: the joint part's nonlinearity, a key of :data:`ACTIVATIONS`.
        layer_norm: a LayerNorm after every hidden H → H layer of the joint part, before its activation.
        shared: another network of the same ``arch`` and width whose time features, time embedding and state
            embedding this one uses instead of its own (a head on that network's embeddings, as the state flow of
            Sendera et al.'s code is on the policy's). They stay registered (and optimised) only in ``shared``;
            this network's own parameters are then the joint part and the last layer.
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        arch: str = "pis",
        hidden_dim: int = 64,
        num_layers: int = 2,
        zero_init: bool = True,
        shared: StateTimeNet | None = None,
        activation: str = "gelu",
        layer_norm: bool = False,
    ):
        super().__init__()
        self.arch = arch
        if activation not in ACTIVATIONS:
            raise ValueError(f"model.activation must be one of {', '.join(ACTIVATIONS)} (got {activation})")
        act = ACTIVATIONS[activation]
        if shared is not None:
            theirs = (shared.arch, shared.state_net.in_features, shared.state_net.out_features)
            if theirs != (arch, dim, hidden_dim):
                raise ValueError(
                    "a network sharing embeddings needs the same (arch, state dim, width) as the one it shares them "
                    f"with (got {(arch, dim, hidden_dim)}, shared {theirs})"
                )
            # plain attributes, not sub-modules: the parameters belong to (and are saved and optimised with) `shared`
            for name in ("time_features", "time_net", "state_net"):
                object.__setattr__(self, name, getattr(shared, name))
        elif arch in ("pis", "mlp"):
            self.time_features = HarmonicTimeFeatures(64)
            tf = self.time_features.out_dim
            if arch == "pis":
                self.time_net = nn.Sequential(nn.Linear(tf, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim))
            else:
                self.time_net = nn.Linear(tf, hidden_dim, bias=False)
            self.state_net = nn.Linear(dim, hidden_dim)
        else:
            raise ValueError(f"model.arch must be one of pis, mlp (got {arch})")
        layers: list[nn.Module] = [act()]
        for _ in range(num_layers):
            layers += [nn.Linear(hidden_dim, hidden_dim)] + ([nn.LayerNorm(hidden_dim)] if layer_norm else []) + [act()]
        self.joint = nn.Sequential(*layers)
        self.out = nn.Linear(hidden_dim, out_dim)
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def embed_time(self, t: torch.Tensor) -> torch.Tensor:
        """``t [T]`` → ``[T, H]``."""
        return self.time_net(self.time_features(t))

    def forward(self, s: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """``s [..., B, d]``, ``t_emb`` broadcastable to ``[..., B, H]`` → ``[..., B, out]``."""
        return self.out(self.joint(self.state_net(s) + t_emb))


class TimeScaleNet(nn.Module):
    """g(t) of the Langevin parametrisation: time features → MLP → ``out_dim``, starting at exactly 0.01.

    The MLP is Linear(128, H) → (num_layers − 1) × [GELU → Linear(H, H)] → GELU → Linear(H, out_dim): ``num_layers``
    counts the layers before the output one, as ``--lgv_layers`` of Sendera et al.'s code does (3 there).

    Args:
        out_dim: 1 (a scalar g per time) or d (per dimension).
        hidden_dim: width H.
        num_layers: layers before the output layer (≥ 1).
    """

    def __init__(self, out_dim: int = 1, hidden_dim: int = 64, num_layers: int = 2):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"model.lgv_layers must be >= 1 (got {num_layers})")
        self.time_features = HarmonicTimeFeatures(64)
        layers: list[nn.Module] = [nn.Linear(self.time_features.out_dim, hidden_dim)]
        for _ in range(num_layers - 1):
            layers += [nn.GELU(), nn.Linear(hidden_dim, hidden_dim)]
        self.net = nn.Sequential(*layers, nn.GELU(), nn.Linear(hidden_dim, out_dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.constant_(self.net[-1].bias, 0.01)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """``t [T]`` → ``[T, out_dim]``."""
        return self.net(self.time_features(t))

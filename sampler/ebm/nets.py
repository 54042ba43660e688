"""Energy networks E_θ(x) -> [B] and the adapter that makes the current E_θ a sampler target.

:class:`MLPEnergy` is for vectors (the 2-D toy sets), :class:`CNNEnergy` for small images (8×8 digits). Both map
``x [B, d]`` to the energy ``[B]``; low energy is high density, p_θ(x) ∝ exp(−E_θ(x)).

:class:`EBMEnergy` wraps a network as an :class:`~sampler.energies.Energy` with ``log_reward(x) = −E_θ(x) / T``, so
that a :class:`~sampler.gfn.DiffusionGFN` (or a Langevin chain) samples the model as it is now. It evaluates the
network in eval mode (no dropout noise, no spectral-norm power iteration: the target is a fixed function while it
is sampled) and with θ frozen, so nothing a sampler computes reaches θ's gradients.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from sampler.energies.base import Energy

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)} (got {name!r})")
    return ACTIVATIONS[name]()


def _maybe_sn(layer: nn.Module, on: bool) -> nn.Module:
    return _spectral_norm(layer) if on else layer


class _Block(nn.Module):
    """Linear → activation → dropout, with a skip connection when ``residual`` and the widths match."""

    def __init__(self, d_in: int, d_out: int, activation: str, dropout: float, sn: bool, residual: bool):
        super().__init__()
        self.linear = _maybe_sn(nn.Linear(d_in, d_out), sn)
        self.act = _activation(activation)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.residual = residual and d_in == d_out

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.drop(self.act(self.linear(h)))
        return h + out if self.residual else out


class MLPEnergy(nn.Module):
    """E_θ(x) by a multilayer perceptron.

    Args:
        dim: input dimension d.
        hidden: widths of the hidden layers.
        activation: one of ``silu swish relu leaky_relu elu gelu tanh softplus`` (smooth ones give smooth
            Langevin gradients).
        dropout: dropout probability after each hidden activation (active only while training θ).
        spectral_norm: spectral normalisation of every linear layer (Miyato et al. 2018), which bounds the
            network's Lipschitz constant and keeps energies from exploding.
        residual: skip connections around the hidden layers of equal width.
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (128, 128, 128),
        activation: str = "silu",
        dropout: float = 0.0,
        spectral_norm: bool = False,
        residual: bool = False,
    ):
        super().__init__()
        hidden = [int(h) for h in hidden]
        if int(dim) < 1 or not hidden or min(hidden) < 1:
            raise ValueError(f"MLPEnergy needs dim ≥ 1 and hidden widths ≥ 1 (got dim={dim}, hidden={hidden})")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1) (got {dropout})")
        self.dim = int(dim)
        widths = [self.dim, *hidden]
        self.blocks = nn.ModuleList(
            _Block(a, b, activation, float(dropout), spectral_norm, residual) for a, b in zip(widths, widths[1:])
        )
        self.out = _maybe_sn(nn.Linear(widths[-1], 1), spectral_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Energies ``[B]`` of ``x [B, d]``."""
        h = x
        for block in self.blocks:
            h = block(h)
        return self.out(h).squeeze(-1)


class CNNEnergy(nn.Module):
    """E_θ(x) by a small convolutional network for flattened single-channel images (8×8 digits).

    Three 3×3 convolutions (the last two with stride 2: 8×8 → 4×4 → 2×2), global sum pooling, a linear head.

    Args:
        image_shape: ``(H, W)``; inputs are ``[B, H·W]``.
        channels: output channels of the three convolutions.
        activation, dropout, spectral_norm: as for :class:`MLPEnergy`.
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (8, 8),
        channels: Sequence[int] = (32, 64, 64),
        activation: str = "silu",
        dropout: float = 0.0,
        spectral_norm: bool = False,
    ):
        super().__init__()
        if len(channels) != 3 or min(int(c) for c in channels) < 1:
            raise ValueError(f"CNNEnergy needs three positive channel counts (got {list(channels)})")
        self.image_shape = (int(image_shape[0]), int(image_shape[1]))
        self.dim = self.image_shape[0] * self.image_shape[1]
        c1, c2, c3 = (int(c) for c in channels)
        layers: list[nn.Module] = []
        for c_in, c_out, stride in ((1, c1, 1), (c1, c2, 2), (c2, c3, 2)):
            layers += [_maybe_sn(nn.Conv2d(c_in, c_out, 3, stride, 1), spectral_norm), _activation(activation)]
            if dropout > 0:
                layers.append(nn.Dropout(float(dropout)))
        self.features = nn.Sequential(*layers)
        self.out = _maybe_sn(nn.Linear(c3, 1), spectral_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Energies ``[B]`` of ``x [B, H·W]``."""
        h = self.features(x.reshape(-1, 1, *self.image_shape))
        return self.out(h.sum((2, 3))).squeeze(-1)


@contextmanager
def sampling_mode(net: nn.Module) -> Iterator[None]:
    """Evaluate ``net`` as a fixed function inside the block: eval mode and θ frozen (``requires_grad=False``), so
    that a sampler's computations never reach θ's gradients. Both are restored afterwards."""
    was_training = net.training
    frozen = [p for p in net.parameters() if p.requires_grad]
    net.eval()
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)
        net.train(was_training)


class EBMEnergy(Energy):
    """The current E_θ as a sampler target: ``log_reward(x) = −E_θ(x) / temperature``.

    The network is held, not registered: its parameters belong to the EBM (and its optimiser), and the energy's
    state dict is empty. Evaluations are counted like any :class:`~sampler.energies.Energy` while counting is on.

    Args:
        net: the energy network ``[B, d] -> [B]``.
        dim: d (default ``net.dim``).
        bounds: ``(lo, hi)`` of the data box: the plot window of 2-D targets.
        temperature: T > 0 (annealed sampling lowers it towards 1).
        t_scale: σ² a diffusion GFN of this target uses (``None``: its default, 1.0).
    """

    def __init__(self, net: nn.Module, dim: int | None = None, bounds: tuple[float, float] = (-5.0, 5.0),
                 temperature: float = 1.0, t_scale: float | None = None):  # fmt: skip
        super().__init__()
        object.__setattr__(self, "net", net)
        self.dim = int(dim if dim is not None else net.dim)
        self.plot_range = (float(bounds[0]), float(bounds[1]))
        self.temperature = float(temperature)
        self.t_scale = t_scale
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 (got {temperature})")

    @property
    def device(self) -> torch.device:
        for p in self.net.parameters():
            return p.device
        return torch.device("cpu")

    def log_reward(self, x: torch.Tensor) -> torch.Tensor:
        """−E_θ(x)/T ``[B]`` for ``x [B, d]``: differentiable in x when x requires grad, never in θ."""
        with sampling_mode(self.net):
            return -self.net(x) / self.temperature

    def log_reward_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(−E_θ(x)/T ``[B]``, its gradient in x ``[B, d]``), both detached; by autograd, θ frozen."""
        with sampling_mode(self.net), torch.enable_grad():
            x = x.detach().requires_grad_(True)
            lr = -self.net(x) / self.temperature
            (grad,) = torch.autograd.grad(lr.sum(), x)
        return lr.detach(), grad.detach()

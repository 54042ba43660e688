"""Policy, flow and Langevin-scaling networks of the diffusion sampler (docs/spec.md §2).

Every network splits into a *time* part, evaluated once for a whole grid of times ``[T, H]``, and a *state*
part evaluated on ``[..., B, d]`` states, so a rollout never embeds the same time B times.
"""

from __future__ import annotations

import functools
import math
import sys
import weakref

import torch
import torch.nn.functional as F
from torch import nn


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
    ):
        super().__init__()
        self.arch = arch
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
        layers: list[nn.Module] = [nn.GELU()]
        for _ in range(num_layers):
            layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
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

    def native_forward(self, s: torch.Tensor, t_emb: torch.Tensor, kernels) -> torch.Tensor:
        """``forward(s [T, B, d], t_emb [T, 1, H])`` without autograd, in the native kernels (rows split over
        threads): the evaluation's batched passes over sampled states."""
        T, B = s.shape[0], s.shape[1]
        out = s.new_empty(T, B, self.out.out_features)
        kernels.mlp_record(*self.frozen(t_emb.reshape(T, -1)).native_args(), s.contiguous(), None, None, out)
        return out

    def frozen(self, t_emb: torch.Tensor) -> FrozenNet:
        """The network at fixed weights for a sampling loop without autograd (see :class:`FrozenNet`)."""
        hidden = [(m.weight.detach().t(), m.bias.detach()) for m in self.joint if isinstance(m, nn.Linear)]
        return FrozenNet(
            self.state_net.weight.detach().t(),
            (t_emb + self.state_net.bias).detach(),
            hidden,
            (self.out.weight.detach().t(), self.out.bias.detach()),
        )

    def _linear_params(self) -> list[torch.Tensor]:
        """Weights and biases of the state path, input layer first: what :class:`_TapedNet` differentiates."""
        layers = [self.state_net] + [m for m in self.joint if isinstance(m, nn.Linear)] + [self.out]
        return [p for m in layers for p in (m.weight, m.bias)]

    def new_tape(self, T: int, B: int, like: torch.Tensor, kernels=None) -> RolloutTape:
        """A recording of ``T`` steps of ``B`` rows (contents undefined); with native ``kernels`` its backward pass
        runs there. Tapes are reused once nothing refers to them any more (the autograd graph that recorded into a
        tape holds it until it is freed): writing a fresh 20–50 MB tape each step costs more in page faults than the
        sampling loop's arithmetic."""
        n_act = sum(isinstance(m, nn.GELU) for m in self.joint)
        shape = (n_act, T, B, self.out.in_features, self.out.out_features, like.device, like.dtype)
        pool = _TAPE_POOLS.setdefault(self, [])
        for tape in pool:
            # references: the pool's list, this loop's variable and getrefcount's argument — nobody else
            if tape.shape == shape and sys.getrefcount(tape) <= 3:
                tape.kernels = kernels
                return tape
        tape = RolloutTape(n_act, T, B, self.out.in_features, self.out.out_features, like, kernels)
        if len(pool) < _TAPE_POOL_SIZE:
            pool.append(tape)
        return tape

    def batched(self, s: torch.Tensor, t_emb: torch.Tensor, kernels=None) -> torch.Tensor:
        """``forward(s [T, B, d], t_emb [T, 1, H])`` for states without a gradient, as one recorded no-grad pass and
        the hand-written backward of :class:`_TapedNet` (autograd's own backward computes the input layer's weight
        gradient in a ~6× slower orientation and keeps more intermediates)."""
        T, B = s.shape[0], s.shape[1]
        tape = self.new_tape(T, B, s, kernels)
        N, H = T * B, tape.z.shape[-1]
        with torch.no_grad():
            net = self.frozen(t_emb.reshape(T, -1))
            if kernels is not None:
                kernels.mlp_record(*net.native_args(), s.contiguous(), tape.z, tape.h, tape.out)
            else:
                torch.matmul(s, net.w_in, out=tape.z[0])  # the time bias differs per step: added over [T, B, H]
                tape.z[0].add_(net.time_bias[:, None])
                net.record_layers(tape.z.view(-1, N, H), tape.h.view(-1, N, H), tape.out.view(N, -1))
        return self.taped(tape, s, t_emb)

    def taped(self, tape: RolloutTape, s: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """``forward(s [T, B, d], t_emb [T, 1, H])`` for the states a :class:`FrozenNet` loop recorded on ``tape``:
        the loop's own outputs, with a gradient for the parameters and ``t_emb`` — no second forward pass."""
        return _TapedNet.apply(tape, s, t_emb.reshape(tape.T, -1), *self._linear_params())


_TAPE_POOL_SIZE = 4  # tapes kept per network for reuse (each ~T·B·H·(2·layers + 1) floats)
# network -> its reusable tapes; outside the module, so copies and pickles of a network do not carry recordings
_TAPE_POOLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class RolloutTape:
    """Every layer's pre-activation and GELU output at every step of a sampling loop (``[n_act, T, B, H]`` each)
    and the raw network output ``[T, B, out]``: what the backward pass of the batched network needs, recorded
    while sampling so the states' policy outputs are never computed twice."""

    def __init__(self, n_act: int, T: int, B: int, H: int, out_dim: int, like: torch.Tensor, kernels=None):
        kw = {"device": like.device, "dtype": like.dtype}
        self.T, self.B = T, B
        self.shape = (n_act, T, B, H, out_dim, like.device, like.dtype)
        self.kernels = kernels  # native kernel module for the backward pass (sampler.gfn.native), or None
        self.z = torch.empty(n_act, T, B, H, **kw)
        self.h = torch.empty(n_act, T, B, H, **kw)
        self.out = torch.empty(T, B, out_dim, **kw)

    @functools.cached_property
    def steps(self) -> list[tuple]:
        """Per-step views ``(z, h, out)`` for a loop, made once on first use (indexing the ``[n_act, T, B, H]``
        buffers each step costs more than a layer)."""
        zs, hs = [z.unbind(0) for z in self.z], [h.unbind(0) for h in self.h]
        return [(tuple(z[i] for z in zs), tuple(h[i] for h in hs), o) for i, o in enumerate(self.out.unbind(0))]


class _TapedNet(torch.autograd.Function):
    """The batched :class:`StateTimeNet` output at recorded states; forward returns the recording, backward is
    the MLP's backward pass written out (the same matmuls autograd would run, from the recorded activations).
    The states carry no gradient (sampled without autograd)."""

    @staticmethod
    def forward(ctx, tape, s, t_emb, *params):
        ctx.tape, ctx.s = tape, s
        ctx.save_for_backward(*params)
        return tape.out.detach()  # a new tensor on the recording: autograd never marks the tape itself

    @staticmethod
    def backward(ctx, grad_out):
        tape, s = ctx.tape, ctx.s
        params = ctx.saved_tensors
        T, B, H = tape.T, tape.B, tape.z.shape[-1]
        N = T * B
        z, h = tape.z.reshape(-1, N, H), tape.h.reshape(-1, N, H)
        g = grad_out.reshape(N, -1)
        if tape.kernels is not None:  # the same pass, tiled over rows in native code
            *grads, d_t = tape.kernels.mlp_backward(g, z, h, s.reshape(N, -1), list(params[::2]), T)
            return (None, None, d_t, *grads)
        grads = [None] * len(params)
        w_out = params[-2]
        grads[-2], grads[-1] = g.t().mm(h[-1]), g.sum(0)
        dh = g.mm(w_out)
        for k in range(z.shape[0] - 1, 0, -1):  # hidden Linear k: input h[k-1], pre-activation z[k]
            dz = torch.ops.aten.gelu_backward(dh, z[k])
            w = params[2 * k]
            grads[2 * k], grads[2 * k + 1] = dz.t().mm(h[k - 1]), dz.sum(0)
            dh = dz.mm(w)
        dz = torch.ops.aten.gelu_backward(dh, z[0]).reshape(T, B, H)
        d_t = dz.sum(1)  # [T, H]: the time embedding enters the first pre-activation as a per-step bias
        grads[0] = s.reshape(N, -1).t().mm(dz.reshape(N, H)).t()  # [d, N]·[N, H]: ~6× faster than [H, N]·[N, d]
        grads[1] = d_t.sum(0)
        return (None, None, d_t, *grads)


class FrozenNet:
    """A :class:`StateTimeNet` evaluated step by step in a rollout loop: the time embedding is folded into the
    first layer's bias for every grid time and each layer is one fused ``addmm`` (bias + matmul), so a step costs
    a handful of kernel calls. Same function as ``StateTimeNet.forward`` up to float rounding; no autograd."""

    def __init__(self, w_in: torch.Tensor, time_bias: torch.Tensor, hidden: list, out: tuple):
        self.w_in, self.time_bias, self.hidden, self.out = w_in, time_bias, hidden, out

    def __call__(self, s: torch.Tensor, i: int, tape: RolloutTape | None = None) -> torch.Tensor:
        """``s [B, d]`` at grid time index ``i`` → ``[B, out]``; with a ``tape``, every layer is written into it
        (and the output is the tape's slice: do not modify it in place)."""
        if tape is not None:
            z, h, out = tape.steps[i]
            torch.addmm(self.time_bias[i], s, self.w_in, out=z[0])
            return self.record_layers(z, h, out)
        h = F.gelu(torch.addmm(self.time_bias[i], s, self.w_in))
        for w, b in self.hidden:
            h = F.gelu(torch.addmm(b, h, w))
        return torch.addmm(self.out[1], h, self.out[0])

    def native_args(self) -> tuple:
        """(w_in, time_bias, hidden weights, hidden biases, w_out, b_out): the network as the native kernels take it."""
        return (self.w_in, self.time_bias, [w for w, _ in self.hidden], [b for _, b in self.hidden], *self.out)

    def record_layers(self, z, h, out: torch.Tensor) -> torch.Tensor:
        """From the first pre-activation ``z[0]`` (already written), every GELU output ``h[k]``, hidden
        pre-activation ``z[k]`` and the output into the given buffers; returns ``out``."""
        torch._C._nn.gelu(z[0], out=h[0])
        for k, (w, b) in enumerate(self.hidden, 1):
            torch.addmm(b, h[k - 1], w, out=z[k])
            torch._C._nn.gelu(z[k], out=h[k])
        return torch.addmm(self.out[1], h[-1], self.out[0], out=out)


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


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Σ over the last dim of log N(x; mean, var) (diagonal), broadcasting; ``var`` may be a float."""
    if not isinstance(var, torch.Tensor):
        d = x.shape[-1]
        return -0.5 * ((x - mean).pow(2).sum(-1) / var + d * math.log(2 * math.pi * var))
    return -0.5 * ((x - mean).pow(2) / var + torch.log(2 * math.pi * var)).sum(-1)

"""The per-step formulas of the diffusion sampler (docs/spec.md §2), in one place for every engine.

A policy network's raw output at a state becomes the forward step's drift and variance here (:class:`ForwardHead`),
and the Brownian bridge's backward step is here (:class:`BridgeHead`). The reference engine
(:mod:`sampler.gfn.reference`) and the accelerated Python engine call these functions; the native kernels implement
the same formulas in C++ and are tested against them.

Forward step (dt = 1/T, σ² = ``t_scale``)::

    raw = clip(NN(s, t), ±out_clip)                      (clip only with clipping)
    μ   = raw[:d] + g(t)·clip(∇log r(s), ±lgv_clip)      (the Langevin term only with langevin)
    v   = log_var_range·tanh(raw[d:])                    (0 without learned_variance)
    P_F(s' | s) = N(s' ; s + dt·μ, dt·σ²·e^v)

Backward step (the bridge of σ²-Brownian motion pinned at 0, step i+1 → i, i ≥ 1)::

    P_B(s_i | s_{i+1}) = N(s_{i+1} − s_{i+1}/(i+1)·(1 + c·tanh a), σ²·dt·i/(i+1)·(1 + c·tanh b))

with (a, b) the learned corrections' output (c = ``pb_scale_range``; a = b = 0 without ``learn_pb``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ForwardHead:
    """The forward step's constants and formulas.

    Attributes:
        dim: state dimension d.
        dt: step size 1/T.
        t_scale: σ².
        learned_variance: the network's second half of outputs sets the log-variance multiplier v.
        log_var_range: |v| ≤ this.
        langevin: add g(t)·clip(∇log r) to the drift.
        clipping: clip the raw output to ±out_clip and ∇log r to ±lgv_clip.
        lgv_clip, out_clip: the clips.
    """

    dim: int
    dt: float
    t_scale: float
    learned_variance: bool
    log_var_range: float
    langevin: bool
    clipping: bool
    lgv_clip: float
    out_clip: float

    @property
    def out_dim(self) -> int:
        """The raw output size the policy network must have: d (drift), or 2d with a learned variance."""
        return 2 * self.dim if self.learned_variance else self.dim

    def __call__(
        self, raw: torch.Tensor, g: torch.Tensor | None = None, grad: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | float]:
        """``(drift μ [..., B, d], log-variance multiplier v [..., B, d] or 0.0)`` from the raw network output
        ``[..., B, out_dim]``; ``g`` and ``grad`` (∇log r at the same states) are needed with ``langevin``."""
        if self.clipping:
            raw = raw.clamp(-self.out_clip, self.out_clip)
        d = self.dim
        mean = raw[..., :d]
        if self.langevin:
            mean = mean + self.langevin_term(g, grad)
        # tanh of a contiguous copy: on the strided half it is several times slower than the copy costs
        log_var = self.log_var_range * torch.tanh(raw[..., d:].contiguous()) if self.learned_variance else 0.0
        return mean, log_var

    def langevin_term(self, g: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The Langevin parametrisation's drift term g(t)·clip(∇log r)."""
        return g * (grad.clamp(-self.lgv_clip, self.lgv_clip) if self.clipping else grad)

    def variance(self, log_var: torch.Tensor | float) -> torch.Tensor | float:
        """The step's variance dt·σ²·e^v (a float when v is the constant 0)."""
        var = self.dt * self.t_scale
        return var * torch.exp(log_var) if isinstance(log_var, torch.Tensor) else var

    def native_args(self) -> tuple:
        """The constants in the order the native kernels take them."""
        return (
            self.dt,
            self.dt * self.t_scale,
            self.log_var_range,
            self.learned_variance,
            self.clipping,
            self.out_clip,
        )


@dataclass(frozen=True)
class BridgeHead:
    """The Brownian-bridge backward step's constants and formula.

    Attributes:
        dim: state dimension d.
        dt: step size 1/T.
        t_scale: σ².
        pb_scale_range: c, the range of the learned corrections (used only when they are given).
    """

    dim: int
    dt: float
    t_scale: float
    pb_scale_range: float

    def mean_var(
        self, s_next: torch.Tensor, idx: torch.Tensor, pb_out: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | float]:
        """Mean and variance of P_B(s_i | s_{i+1}) for step indices ``idx`` (i ≥ 1, broadcast over the leading dim
        of ``s_next [..., B, d]``), with the learned corrections ``pb_out [..., B, 2d]`` if given."""
        shape = (-1,) + (1,) * (s_next.dim() - 1)
        i = idx.to(s_next.dtype).reshape(shape)
        pull = s_next / (i + 1)
        var = self.t_scale * self.dt * i / (i + 1)
        if pb_out is not None:
            a, b = pb_out[..., : self.dim], pb_out[..., self.dim :]
            pull = pull * (1 + self.pb_scale_range * torch.tanh(a))
            var = var * (1 + self.pb_scale_range * torch.tanh(b))
        return s_next - pull, var


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor | float) -> torch.Tensor:
    """Σ over the last dim of log N(x; mean, var) (diagonal), broadcasting; ``var`` may be a float."""
    if not isinstance(var, torch.Tensor):
        d = x.shape[-1]
        return -0.5 * ((x - mean).pow(2).sum(-1) / var + d * math.log(2 * math.pi * var))
    return -0.5 * ((x - mean).pow(2) / var + torch.log(2 * math.pi * var)).sum(-1)


def noise(n: int, d: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One step's N(0, I) noise ``[n, d]``. Every engine draws it step by step, in this order, from the rollout's
    generator: the random stream, and so every sample for a given seed, is the same on every engine."""
    return torch.randn(n, d, device=like.device, dtype=like.dtype, generator=generator)

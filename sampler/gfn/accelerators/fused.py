"""The accelerated engine: the reference engine's rollouts with a fused sampling loop, recorded network passes and
hand-written backward passes (docs/performance.md), and the native CPU kernels where they apply.

On a CPU a rollout's cost is mostly fixed per-operation overhead, not arithmetic. This engine removes operations:

* the sampling loop runs the policy as a :class:`FrozenNet` — the time embedding folded into the first layer's bias
  for every grid time, each layer one fused ``addmm`` — and, when log P_F will be wanted with a gradient, records
  every layer's activations on a :class:`RolloutTape`;
* log P_F is then differentiated from that recording (:class:`_TapedNet`: the MLP's backward written out, in the
  orientation that is fast for the input layer) instead of a second forward pass under autograd;
* without a gradient, log P_F comes from the loop's own drifts and variances;
* with the native kernels (:mod:`sampler.gfn.accelerators.native`), a whole step runs in one call per chunk of rows
  per thread, and log P_F's head and log P_B's bridge are one fused pass each way.

It implements exactly the networks :func:`sampler.gfn.accelerators.supports` accepts (a :class:`StateTimeNet` of
Linear and exact-GELU layers) and is tested equal to the reference engine — states, log-densities and every
gradient — on every variant it accepts (tests/test_engines.py).
"""

from __future__ import annotations

import functools
import math
import sys
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from sampler.gfn.accelerators import native as kernels
from sampler.gfn.heads import gaussian_log_prob, noise
from sampler.gfn.reference import ReferenceEngine


class AcceleratedEngine(ReferenceEngine):
    """The reference rollouts with the fast primitives.

    Args:
        native: ``auto`` (the native kernels on CPU float32 tensors when they build, else this module's PyTorch
            path, with one warning), ``true`` (required: fails at construction when they cannot be built) or
            ``false`` (never).
    """

    def __init__(self, native: str = "auto"):
        self.native_mode = kernels.parse_mode(native)
        if self.native_mode == "true":
            kernels.load(required=True)  # fail at construction, not at the first rollout
        self.name = {"auto": "auto", "true": "native", "false": "fused"}[self.native_mode]

    def kernels(self, like: torch.Tensor):
        """The native kernel module when it applies to tensors like ``like`` (else None: the PyTorch path)."""
        if self.native_mode == "false" or not kernels.usable_for(like):
            return None
        return kernels.load(required=self.native_mode == "true")

    # ------------------------------------------------------------------------------------------------ primitives
    def sample_states(self, gfn, n: int, t_emb, g, eps2: float, generator, want_grad: bool):
        """The sampling loop with the policy as a :class:`FrozenNet`; ``ctx = (tape, log_pf)``: with ``want_grad``
        the loop records every layer on ``tape`` for :meth:`log_pf`, without it ``log_pf`` is computed from the
        loop's own drifts and variances."""
        native = self.kernels(t_emb)
        tape = new_tape(gfn.policy, gfn.T, n, t_emb, native) if want_grad else None
        S, G, log_rs, log_pf = self._sample(gfn, native, n, t_emb, g, eps2, generator, not want_grad, tape)
        return S, G, log_rs, (tape, log_pf)

    def log_pf(self, gfn, S: torch.Tensor, t_emb, g, G, ctx) -> torch.Tensor:
        tape, log_pf = ctx if ctx is not None else (None, None)
        if log_pf is not None:
            return log_pf
        T = gfn.T
        s, s_next = S[:T], S[1:]
        g_T = None if g is None else g[:T, None]
        raw = (
            taped(gfn.policy, tape, s, t_emb[:T])
            if tape is not None
            else self.net_over_steps(gfn.policy, s, t_emb[:T, None])
        )
        native = self.kernels(S) if not S.requires_grad else None
        if native is not None:  # the head and the Gaussian density fused, forward and backward
            extra = gfn.head.langevin_term(g_T, G) if gfn.langevin else None
            return kernels.PFHeadLogProb.apply(native, gfn.head.native_args(), raw, s, s_next, extra)
        mean, log_var = gfn.head(raw, g_T, G)
        return gaussian_log_prob(s_next, s + gfn.dt * mean, gfn.head.variance(log_var))

    def log_pb(self, gfn, S: torch.Tensor) -> torch.Tensor:
        native = self.kernels(S) if gfn.pb_net is None and not S.requires_grad else None
        if native is not None:
            return native.bridge_log_prob(S, gfn.t_scale, gfn.dt)
        return super().log_pb(gfn, S)

    def net_over_steps(self, net, s: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """``net(s [T, B, d], t_emb [T, 1, H])``; for sampled states (no gradient of their own) with a gradient wanted
        for the network, through its recorded pass and hand-written backward (native when the kernels apply);
        without one, in the native kernels when they apply."""
        native = self.kernels(s)
        batched_ = s.dim() == 3 and not s.requires_grad and t_emb.shape[0] == s.shape[0]
        if batched_ and torch.is_grad_enabled():
            return batched(net, s, t_emb, native)
        if batched_ and native is not None and not t_emb.requires_grad:
            return native_forward(net, s, t_emb, native)
        return net(s, t_emb)

    # ---------------------------------------------------------------------------------------------- the loops
    def _sample(self, gfn, native, n: int, t_emb, g, eps2: float, generator, with_log_pf: bool, tape):
        """``(states [T+1, B, d], ∇log r [T, B, d] or None, log r list, log P_F [T, B] or None)``: per step only the
        policy, the Langevin term and the Gaussian update; log P_F (when ``with_log_pf``) from the loop's drifts and
        variances, under the unexplored policy."""
        T, d, dt = gfn.T, gfn.dim, gfn.dt
        head = gfn.head
        net = frozen(gfn.policy, t_emb)
        g_all = None if g is None else g.detach()
        if native is not None:
            return self._sample_native(gfn, native, net, n, g_all, eps2, generator, with_log_pf, tape)
        var0 = dt * head.t_scale
        s = torch.zeros(n, d, device=t_emb.device)
        states, grads, log_rs, means, variances = [s], [], [], [], []
        for i in range(T):
            out = net(s, i, tape)
            if head.clipping:
                out = (
                    out.clamp(-head.out_clip, head.out_clip)
                    if tape is not None
                    else out.clamp_(-head.out_clip, head.out_clip)
                )
            mean = out[:, :d]
            if head.langevin:
                lr_i, gi = gfn.energy.log_reward_and_grad(s)
                log_rs.append(lr_i)
                grads.append(gi)
                mean = mean + head.langevin_term(g_all[i], gi)
            step = torch.add(s, mean, alpha=dt)
            if with_log_pf:
                means.append(step)
            if head.learned_variance:  # std = sqrt(dt·σ²·e^v + ε²), v = range·tanh(raw), in place
                var = torch.exp(torch.tanh(out[:, d:]).mul_(head.log_var_range)).mul_(var0)
                if with_log_pf:
                    variances.append(var.clone())
                s = torch.addcmul(step, noise(n, d, s, generator), var.add_(eps2).sqrt_())
            else:
                s = step.add(noise(n, d, s, generator), alpha=math.sqrt(var0 + eps2))
            states.append(s)
        S = torch.stack(states)
        log_pf = None
        if with_log_pf:
            log_pf = gaussian_log_prob(S[1:], torch.stack(means), torch.stack(variances) if variances else var0)
        return S, (torch.stack(grads) if head.langevin else None), log_rs, log_pf

    def _sample_native(self, gfn, native, net, n: int, g_all, eps2: float, generator, with_log_pf: bool, tape):
        """:meth:`_sample` in the native kernel: each step one call (network, update, recording and log P_F for a
        chunk of rows per thread), the noise drawn step by step from ``generator`` as the PyTorch loop does."""
        T, d = gfn.T, gfn.dim
        S = torch.empty(T + 1, n, d, device=net.w_in.device)
        S[0].zero_()
        log_pf = S.new_empty(T, n) if with_log_pf else None
        record = (tape.z, tape.h, tape.out) if tape is not None else (None, None, None)
        rollout = native.PolicyRollout(*net.native_args(), *gfn.head.native_args(), eps2, S, *record, log_pf)
        if not gfn.langevin:
            rollout.run(generator)
            return S, None, [], log_pf
        grads, log_rs = [], []
        for i in range(T):
            lr_i, gi = gfn.energy.log_reward_and_grad(S[i])
            log_rs.append(lr_i)
            grads.append(gi)
            rollout.step(i, noise(n, d, S[i], generator), gfn.head.langevin_term(g_all[i], gi).contiguous())
        return S, torch.stack(grads), log_rs, log_pf


# ------------------------------------------------------------------------------------------------ the networks
def native_forward(net, s: torch.Tensor, t_emb: torch.Tensor, native) -> torch.Tensor:
    """``net(s [T, B, d], t_emb [T, 1, H])`` without autograd in the native kernels (rows split over threads)."""
    T, B = s.shape[0], s.shape[1]
    out = s.new_empty(T, B, net.out.out_features)
    native.mlp_record(*frozen(net, t_emb.reshape(T, -1)).native_args(), s.contiguous(), None, None, out)
    return out


def frozen(net, t_emb: torch.Tensor) -> FrozenNet:
    """``net`` (a :class:`~sampler.gfn.nets.StateTimeNet`) at fixed weights for a loop without autograd."""
    hidden = [(m.weight.detach().t(), m.bias.detach()) for m in net.joint if isinstance(m, nn.Linear)]
    return FrozenNet(
        net.state_net.weight.detach().t(),
        (t_emb + net.state_net.bias).detach(),
        hidden,
        (net.out.weight.detach().t(), net.out.bias.detach()),
    )


def _linear_params(net) -> list[torch.Tensor]:
    """Weights and biases of the state path, input layer first: what :class:`_TapedNet` differentiates."""
    layers = [net.state_net] + [m for m in net.joint if isinstance(m, nn.Linear)] + [net.out]
    return [p for m in layers for p in (m.weight, m.bias)]


def new_tape(net, T: int, B: int, like: torch.Tensor, native=None) -> RolloutTape:
    """A recording of ``T`` steps of ``B`` rows of ``net`` (contents undefined); with ``native`` kernels its backward
    pass runs there. Tapes are reused once nothing refers to them any more (the autograd graph that recorded into a
    tape holds it until it is freed): a fresh 20–50 MB tape each step costs more in page faults than the loop."""
    n_act = sum(isinstance(m, nn.GELU) for m in net.joint)
    shape = (n_act, T, B, net.out.in_features, net.out.out_features, like.device, like.dtype)
    pool = _TAPE_POOLS.setdefault(net, [])
    for tape in pool:
        # references: the pool's list, this loop's variable and getrefcount's argument — nobody else
        if tape.shape == shape and sys.getrefcount(tape) <= 3:
            tape.kernels = native
            return tape
    tape = RolloutTape(n_act, T, B, net.out.in_features, net.out.out_features, like, native)
    if len(pool) < _TAPE_POOL_SIZE:
        pool.append(tape)
    return tape


def batched(net, s: torch.Tensor, t_emb: torch.Tensor, native=None) -> torch.Tensor:
    """``net(s [T, B, d], t_emb [T, 1, H])`` for states without a gradient: one recorded no-grad pass, then the
    hand-written backward of :class:`_TapedNet` (autograd's own backward computes the input layer's weight gradient
    in a several times slower orientation and keeps more intermediates)."""
    T, B = s.shape[0], s.shape[1]
    tape = new_tape(net, T, B, s, native)
    N, H = T * B, tape.z.shape[-1]
    with torch.no_grad():
        fn = frozen(net, t_emb.reshape(T, -1))
        if native is not None:
            native.mlp_record(*fn.native_args(), s.contiguous(), tape.z, tape.h, tape.out)
        else:
            torch.matmul(s, fn.w_in, out=tape.z[0])  # the time bias differs per step: added over [T, B, H]
            tape.z[0].add_(fn.time_bias[:, None])
            fn.record_layers(tape.z.view(-1, N, H), tape.h.view(-1, N, H), tape.out.view(N, -1))
    return taped(net, tape, s, t_emb)


def taped(net, tape: RolloutTape, s: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
    """``net(s [T, B, d], t_emb [T, (1,) H])`` for the states a loop recorded on ``tape``: the loop's own outputs,
    with a gradient for the parameters and ``t_emb`` — no second forward pass."""
    return _TapedNet.apply(tape, s, t_emb.reshape(tape.T, -1), *_linear_params(net))


_TAPE_POOL_SIZE = 4  # tapes kept per network for reuse (each ~T·B·H·(2·layers + 1) floats)
# network -> its reusable tapes; outside the module, so copies and pickles of a network do not carry recordings
_TAPE_POOLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class RolloutTape:
    """Every layer's pre-activation and GELU output at every step of a sampling loop (``[n_act, T, B, H]`` each)
    and the raw network output ``[T, B, out]``: what the backward pass of the batched network needs, recorded
    while sampling so the states' policy outputs are never computed twice."""

    def __init__(self, n_act: int, T: int, B: int, H: int, out_dim: int, like: torch.Tensor, native=None):
        kw = {"device": like.device, "dtype": like.dtype}
        self.T, self.B = T, B
        self.shape = (n_act, T, B, H, out_dim, like.device, like.dtype)
        self.kernels = native  # native kernel module for the backward pass, or None
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
    """The batched network output at recorded states; forward returns the recording, backward is the MLP's backward
    pass written out (the same matmuls autograd would run, from the recorded activations). The states carry no
    gradient (sampled without autograd)."""

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
        grads[0] = s.reshape(N, -1).t().mm(dz.reshape(N, H)).t()  # [d, N]·[N, H]: faster than [H, N]·[N, d]
        grads[1] = d_t.sum(0)
        return (None, None, d_t, *grads)


class FrozenNet:
    """A :class:`~sampler.gfn.nets.StateTimeNet` evaluated step by step in a rollout loop: the time embedding folded
    into the first layer's bias for every grid time and each layer one fused ``addmm`` (bias + matmul), so a step
    costs a handful of kernel calls. Same function as the network's ``forward`` up to float rounding; no autograd."""

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

"""The diffusion sampler as a GFlowNet (Sendera et al. 2024, https://arxiv.org/abs/2402.05098; docs/spec.md §2).

The forward process starts at s_0 = 0 and takes T Gaussian steps
``P_F(s_{i+1}|s_i) = N(s_i + dt·μ_θ(s_i, t_i), dt·σ²·e^{v_θ}·I)``; the backward process is the Brownian
bridge of a σ²-Brownian motion pinned at 0, optionally with learned corrections.

Hot-path design: the rollout loop holds only the policy call (without autograd) and the state update. Every
log-density, flow and the policy evaluation that carries gradients is computed afterwards, batched over the
stacked ``[T, B, d]`` states, with the time embedding of the whole grid computed once. On CPU (float32) the loop,
the recorded network passes and their backward, log P_F and the Brownian bridge's log P_B run in native kernels
(:mod:`sampler.gfn.native`, ``model.native``); the PyTorch code here is the reference they are tested against and
the path on GPUs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from sampler.energies.base import Energy
from sampler.gfn import native as kernels
from sampler.gfn.nets import StateTimeNet, TimeScaleNet, gaussian_log_prob
from sampler.gfn.trajectories import Trajectories

FLOWS = ("scalar", "conditional", "forward_looking")


@dataclass
class _PolicyOut:
    mean: torch.Tensor  # [..., B, d] drift μ
    log_var: torch.Tensor | float  # [..., B, d] v (log-variance multiplier) or 0.0


class DiffusionGFN(nn.Module):
    """Diffusion-based GFlowNet sampler of a continuous target.

    Args:
        energy: the target (kept as a plain attribute, not a sub-module: its parameters are never trained here).
        T: number of steps; dt = 1/T.
        t_scale: σ², the diffusion coefficient of the reference Brownian motion.
        arch: ``pis`` or ``mlp`` (see :class:`StateTimeNet`).
        hidden_dim, num_layers, zero_init: policy/flow network shape; zero_init zeroes the last layer.
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
            steps pay the compilation).
        native: ``auto | true | false`` — the compiled CPU kernels of the sampling loop, log P_F and log P_B
            (:mod:`sampler.gfn.native`) on CPU float32; ``auto`` falls back to PyTorch where they cannot be built.
    """

    def __init__(
        self,
        energy: Energy,
        T: int = 100,
        t_scale: float = 1.0,
        arch: str = "pis",
        hidden_dim: int = 64,
        num_layers: int = 2,
        zero_init: bool = True,
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
        native: str | bool = "auto",
    ):
        super().__init__()
        if flow not in FLOWS:
            raise ValueError(f"model.flow must be one of {', '.join(FLOWS)} (got {flow})")
        object.__setattr__(self, "energy", energy)  # not registered: its state is not ours
        d = energy.dim
        self.dim, self.T, self.dt = d, int(T), 1.0 / T
        self.t_scale = float(t_scale)
        self.learned_variance, self.log_var_range = learned_variance, float(log_var_range)
        self.langevin, self.clipping = langevin, clipping
        self.lgv_clip, self.out_clip = float(lgv_clip), float(out_clip)
        self.learn_pb, self.pb_scale_range = learn_pb, float(pb_scale_range)
        self.flow_type = flow
        self.flow_shares_embeddings = bool(flow_shares_embeddings) and flow != "scalar"

        out = 2 * d if learned_variance else d
        self.policy = StateTimeNet(d, out, arch, hidden_dim, num_layers, zero_init)
        self.lgv_scale = TimeScaleNet(d if langevin_per_dim else 1, hidden_dim, lgv_layers) if langevin else None
        self.pb_net = StateTimeNet(d, 2 * d, arch, hidden_dim, num_layers, zero_init=True) if learn_pb else None
        if flow == "scalar":
            self.log_Z = nn.Parameter(torch.tensor(float(log_Z_init)))
            self.flow_net = None
        else:
            self.log_Z = None
            flow_zero = zero_init if flow_zero_init is None else flow_zero_init
            shared = self.policy if self.flow_shares_embeddings else None
            self.flow_net = StateTimeNet(d, 1, arch, hidden_dim, num_layers, flow_zero, shared=shared)
        self.register_buffer("times", torch.arange(self.T + 1, dtype=torch.float32) / self.T, persistent=False)
        # Not a registered sub-module: the compiled wrapper shares the policy's parameters and adds no state.
        object.__setattr__(self, "_compiled_policy", torch.compile(self.policy, dynamic=False) if compile else None)
        self.native_mode = kernels.parse_mode(native)
        if self.native_mode == "true":
            kernels.load(required=True)  # fail at construction, not at the first rollout

    def _kernels(self, like: torch.Tensor):
        """The native kernel module when it applies to tensors like ``like`` (else None: the PyTorch path)."""
        if self.native_mode == "false" or self._compiled_policy is not None or not kernels.usable_for(like):
            return None
        return kernels.load(required=self.native_mode == "true")

    # ----------------------------------------------------------------------------------------------- parameters
    def policy_parameters(self) -> list[nn.Parameter]:
        """The policy network (with the embeddings a shared-embedding flow also uses) and g(t): lr_policy."""
        ps = list(self.policy.parameters())
        return ps + (list(self.lgv_scale.parameters()) if self.lgv_scale is not None else [])

    def flow_parameters(self) -> list[nn.Parameter]:
        """log Z, or the state-flow network's own parameters (only its head when it shares embeddings): lr_flow."""
        return [self.log_Z] if self.log_Z is not None else list(self.flow_net.parameters())

    def backward_parameters(self) -> list[nn.Parameter]:
        return list(self.pb_net.parameters()) if self.pb_net is not None else []

    # ------------------------------------------------------------------------------------------ policy pieces
    def _policy(
        self, s: torch.Tensor, t_emb: torch.Tensor, g: torch.Tensor | None, grad: torch.Tensor | None
    ) -> _PolicyOut:
        """Drift and log-variance multiplier at states ``s [..., B, d]`` (t_emb, g broadcast to it)."""
        return self._policy_head(self._policy_raw(s, t_emb), g, grad)

    def _policy_raw(self, s: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """The policy network's raw output at ``s [..., B, d]`` (compiled, or recorded for batched sampled states)."""
        if self._compiled_policy is not None:
            return self._compiled_policy(s, t_emb)
        return _over_steps(self.policy, s, t_emb, self._kernels(s))

    def _policy_head(self, out: torch.Tensor, g: torch.Tensor | None, grad: torch.Tensor | None) -> _PolicyOut:
        """The raw network output → drift (with the Langevin term) and log-variance multiplier."""
        if self.clipping:
            out = out.clamp(-self.out_clip, self.out_clip)
        d = self.dim
        mean = out[..., :d]
        if self.langevin:
            mean = mean + self._langevin_term(g, grad)
        # tanh of the contiguous copy: on the strided half it is ~5× slower than the copy costs
        log_var = self.log_var_range * torch.tanh(out[..., d:].contiguous()) if self.learned_variance else 0.0
        return _PolicyOut(mean, log_var)

    def _langevin_term(self, g: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The Langevin parametrisation's drift term g(t)·clip(∇log r)."""
        return g * (grad.clamp(-self.lgv_clip, self.lgv_clip) if self.clipping else grad)

    def _pf_var(self, log_var) -> torch.Tensor | float:
        var = self.dt * self.t_scale
        return var * torch.exp(log_var) if isinstance(log_var, torch.Tensor) else var

    def _pb_mean_var(self, s_next: torch.Tensor, idx: torch.Tensor, pb_out: torch.Tensor | None):
        """Brownian-bridge P_B(s_i | s_{i+1}) for step indices ``idx`` (i ≥ 1), ``s_next [..., B, d]``."""
        shape = (-1,) + (1,) * (s_next.dim() - 1)
        i = idx.to(s_next.dtype).reshape(shape)
        pull = s_next / (i + 1)
        var = self.t_scale * self.dt * i / (i + 1)
        if pb_out is not None:
            a, b = pb_out[..., : self.dim], pb_out[..., self.dim :]
            pull = pull * (1 + self.pb_scale_range * torch.tanh(a))
            var = var * (1 + self.pb_scale_range * torch.tanh(b))
        return s_next - pull, var

    def _time_grid(self):
        times = self.times
        t_emb = self.policy.embed_time(times)  # [T+1, H] once per rollout
        g = self.lgv_scale(times) if self.langevin else None  # [T+1, 1 or d]
        return times, t_emb, g

    # ---------------------------------------------------------------------------------------- state quantities
    def _energy_at(self, states: torch.Tensor, need_grad: bool):
        """log r (and ∇log r) at ``states [T', B, d]`` in one batched call."""
        flat = states.reshape(-1, self.dim)
        if need_grad:
            lr, grad = self.energy.log_reward_and_grad(flat)
            return lr.reshape(states.shape[:-1]), grad.reshape(states.shape)
        with torch.no_grad():
            return self.energy.log_reward(flat).reshape(states.shape[:-1]), None

    def _log_flows(self, states: torch.Tensor, log_r_states: torch.Tensor | None, log_reward: torch.Tensor):
        """``[B, T+1]`` log-flows, terminal column = log r (conditional / forward-looking flows)."""
        T = self.T
        inner = states[:T]  # [T, B, d]
        # with shared embeddings this is the policy's time embedding, and the recorded pass's backward sends the
        # flow's gradient into it and into the policy's state embedding (the first layer of the taped network)
        f_emb = self.flow_net.embed_time(self.times[:T])[:, None]  # [T, 1, H]
        F = _over_steps(self.flow_net, inner, f_emb, self._kernels(inner)).squeeze(-1)  # [T, B]
        if self.flow_type == "forward_looking":
            t = self.times[:T, None]  # [T, 1]
            i = torch.arange(T, device=states.device, dtype=states.dtype)
            ref_var = (self.t_scale * self.dt * torch.clamp(i, min=1.0))[:, None, None]  # [T, 1, 1]
            ref = gaussian_log_prob(inner, torch.zeros((), device=states.device), ref_var.expand_as(inner[..., :1]))
            F = F + (1 - t) * ref + t * log_r_states[:T]
        return torch.cat([F, log_reward[None]], 0).transpose(0, 1)  # [B, T+1]

    def _log_pb(self, states: torch.Tensor) -> torch.Tensor:
        """``[T, B]`` log P_B(s_i | s_{i+1}) for states ``[T+1, B, d]``; the step to s_0 is deterministic."""
        T = self.T
        native = self._kernels(states) if self.pb_net is None and not states.requires_grad else None
        if native is not None:
            return native.bridge_log_prob(states, self.t_scale, self.dt)
        idx = torch.arange(1, T, device=states.device)
        s_next, s_prev = states[2:], states[1:T]  # [T-1, B, d]
        pb_out = None
        if self.pb_net is not None:
            pb_emb = self.pb_net.embed_time(self.times[2:])[:, None]
            pb_out = _over_steps(self.pb_net, s_next, pb_emb, self._kernels(s_next))
        mean, var = self._pb_mean_var(s_next, idx, pb_out)
        var = var.expand_as(s_prev) if isinstance(var, torch.Tensor) else var
        lp = gaussian_log_prob(s_prev, mean, var)  # [T-1, B]
        return torch.cat([lp.new_zeros(1, states.shape[1]), lp], 0)

    def _log_pf(self, states, t_emb, g, grads, tape=None) -> torch.Tensor:
        """``[T, B]`` log P_F(s_{i+1} | s_i) under the unexplored policy, batched over steps (from the sampling
        loop's recorded network outputs when a ``tape`` is given)."""
        T = self.T
        s, s_next = states[:T], states[1:]
        g_T = None if g is None else g[:T, None]
        raw = self.policy.taped(tape, s, t_emb[:T]) if tape is not None else self._policy_raw(s, t_emb[:T, None])
        native = self._kernels(states) if not states.requires_grad else None
        if native is not None:  # the head and the Gaussian density fused, forward and backward
            extra = self._langevin_term(g_T, grads) if self.langevin else None
            return kernels.PFHeadLogProb.apply(native, self._head_args(), raw, s, s_next, extra)
        out = self._policy_head(raw, g_T, grads)
        return gaussian_log_prob(s_next, s + self.dt * out.mean, self._pf_var(out.log_var))

    def _head_args(self) -> tuple:
        """The forward head's constants as the native kernels take them."""
        return (
            self.dt,
            self.dt * self.t_scale,
            self.log_var_range,
            self.learned_variance,
            self.clipping,
            self.out_clip,
        )

    def _assemble(self, states: torch.Tensor, log_pf, log_pb, log_reward, log_r_states) -> Trajectories:
        log_flow, log_Z = None, None
        if self.flow_type == "scalar":
            log_Z = self.log_Z
        else:
            log_flow = self._log_flows(states, log_r_states, log_reward)
            log_Z = log_flow[:, 0]
        return Trajectories(
            states=states.transpose(0, 1),
            log_pf=log_pf.transpose(0, 1),
            log_pb=log_pb.transpose(0, 1),
            log_reward=log_reward,
            log_Z=log_Z,
            log_flow=log_flow,
            log_reward_states=None if log_r_states is None else log_r_states.transpose(0, 1),
        )

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
        T = self.T
        _, t_emb, g = self._time_grid()
        eps2 = 0.0 if exploration_std is None else float(exploration_std) ** 2
        need_grad = self.langevin
        if reparam and torch.is_grad_enabled():
            S, G, log_rs, log_pf = self._rollout_reparam(n, t_emb, g, eps2, generator)
            log_reward = self.energy.log_reward(S[-1])
        else:
            keep = not torch.is_grad_enabled()  # no gradient wanted: log P_F from the loop's own policy outputs
            # with a gradient: the loop records every layer, and log P_F is differentiated from that recording
            tape = None
            if not keep and self._compiled_policy is None:
                tape = self.policy.new_tape(T, n, t_emb, self._kernels(t_emb))
            with torch.no_grad():
                S, G, log_rs, log_pf = self._sample_states(n, t_emb, g, eps2, generator, keep, tape)
                log_reward = self.energy.log_reward(S[-1])
            if log_pf is None:  # batched over steps, with the gradient, at the sampled states
                log_pf = self._log_pf(S, t_emb, g, G, tape)
        log_r_states = None
        if self.flow_type == "forward_looking":
            if need_grad:
                log_r_states = torch.cat([torch.stack(log_rs), log_reward.detach()[None]], 0)
            else:
                log_r_states = torch.cat([self._energy_at(S[:T], False)[0], log_reward.detach()[None]], 0)
        return self._assemble(S, log_pf, self._log_pb(S), log_reward, log_r_states)

    def _sample_states(self, n: int, t_emb, g, eps2: float, generator, with_log_pf: bool = False, tape=None):
        """The sampling loop without autograd: ``(states [T+1, B, d], ∇log r [T, B, d] or None, log r list,
        log P_F [T, B] or None)``.

        Per step only the policy (a :class:`FrozenNet`: fused layers, time folded into the first bias), the
        Langevin term and the Gaussian update; densities are computed afterwards on the stacked states — from the
        loop's drifts and variances when ``with_log_pf`` (no gradient needed), else by the caller (from ``tape``,
        where the loop records every layer, when one is given).
        """
        T, d, dt = self.T, self.dim, self.dt
        net = self.policy.frozen(t_emb)
        g_all = None if g is None else g.detach()
        native = self._kernels(t_emb)
        if native is not None:
            return self._sample_states_native(native, net, n, g_all, eps2, generator, with_log_pf, tape)
        var0 = self.dt * self.t_scale
        s = torch.zeros(n, d, device=t_emb.device)
        states, grads, log_rs, means, variances = [s], [], [], [], []
        for i in range(T):
            out = net(s, i, tape)
            if self.clipping:
                out = (
                    out.clamp(-self.out_clip, self.out_clip)
                    if tape is not None
                    else out.clamp_(-self.out_clip, self.out_clip)
                )
            mean = out[:, :d]
            if self.langevin:
                lr_i, gi = self.energy.log_reward_and_grad(s)
                log_rs.append(lr_i)
                grads.append(gi)
                mean = mean + self._langevin_term(g_all[i], gi)
            step = torch.add(s, mean, alpha=dt)
            if with_log_pf:
                means.append(step)
            if self.learned_variance:  # std = sqrt(dt·σ²·e^v + ε²), v = range·tanh(raw)
                var = torch.exp(torch.tanh(out[:, d:]).mul_(self.log_var_range)).mul_(var0)
                if with_log_pf:
                    variances.append(var.clone())
                s = torch.addcmul(step, _noise(n, d, s, generator), var.add_(eps2).sqrt_())
            else:
                s = step.add(_noise(n, d, s, generator), alpha=math.sqrt(var0 + eps2))
            states.append(s)
        S = torch.stack(states)
        log_pf = None
        if with_log_pf:  # under the unexplored policy, as _log_pf computes it
            log_pf = gaussian_log_prob(S[1:], torch.stack(means), torch.stack(variances) if variances else var0)
        return S, (torch.stack(grads) if self.langevin else None), log_rs, log_pf

    def _sample_states_native(self, native, net, n: int, g_all, eps2: float, generator, with_log_pf: bool, tape):
        """:meth:`_sample_states` in the native kernel: each step one call (network, update, recording and log P_F
        for a chunk of rows per thread), the noise drawn step by step from ``generator`` as the PyTorch loop does."""
        T, d = self.T, self.dim
        S = torch.empty(T + 1, n, d, device=net.w_in.device)
        S[0].zero_()
        log_pf = S.new_empty(T, n) if with_log_pf else None
        record = (tape.z, tape.h, tape.out) if tape is not None else (None, None, None)
        rollout = native.PolicyRollout(*net.native_args(), *self._head_args(), eps2, S, *record, log_pf)
        if not self.langevin:
            rollout.run(generator)
            return S, None, [], log_pf
        grads, log_rs = [], []
        for i in range(T):
            lr_i, gi = self.energy.log_reward_and_grad(S[i])
            log_rs.append(lr_i)
            grads.append(gi)
            rollout.step(i, _noise(n, d, S[i], generator), self._langevin_term(g_all[i], gi).contiguous())
        return S, torch.stack(grads), log_rs, log_pf

    def _rollout_reparam(self, n: int, t_emb, g, eps2: float, generator):
        """The PIS rollout: the states carry the gradient through the whole chain."""
        T, d, dt = self.T, self.dim, self.dt
        s = torch.zeros(n, d, device=t_emb.device)
        states, grads, log_rs, means, log_vars = [s], [], [], [], []
        for i in range(T):
            gi = None
            if self.langevin:
                lr_i, gi = self.energy.log_reward_and_grad(s.detach())
                log_rs.append(lr_i)
                grads.append(gi)
            out = self._policy(s, t_emb[i], None if g is None else g[i], gi)
            var = self._pf_var(out.log_var)
            std = torch.sqrt(var + eps2) if isinstance(var, torch.Tensor) else math.sqrt(var + eps2)
            s = s + dt * out.mean + std * _noise(n, d, s, generator)
            states.append(s)
            means.append(out.mean)
            log_vars.append(out.log_var)
        S = torch.stack(states)
        lv = torch.stack(log_vars) if self.learned_variance else 0.0
        log_pf = gaussian_log_prob(S[1:], S[:-1] + dt * torch.stack(means), self._pf_var(lv))
        return S, (torch.stack(grads) if self.langevin else None), log_rs, log_pf

    def rollout_backward(
        self, x: torch.Tensor, generator: torch.Generator | None = None, log_reward: torch.Tensor | None = None
    ) -> Trajectories:
        """Sample backward (Brownian-bridge) trajectories ending at ``x [B, d]`` (a trailing extra column, as in
        torchgfn's ``(B, d+1)`` states, is dropped).

        Returns:
            Trajectories with ``states[:, -1] == x`` and ``states[:, 0] == 0``; log P_F and log P_B carry
            gradients for the policy, flow and backward networks.
        """
        T, d = self.T, self.dim
        x = x.detach()
        if x.shape[-1] == d + 1:
            x = x[..., :d]
        if x.dim() != 2 or x.shape[-1] != d:
            raise ValueError(f"rollout_backward expects terminal states of shape [B, {d}] (got {tuple(x.shape)})")
        x = x.to(self.times.device)
        n = x.shape[0]
        states = [x]
        s = x
        with torch.no_grad():
            pb_emb = self.pb_net.embed_time(self.times) if self.pb_net is not None else None
            for i in range(T - 1, 0, -1):
                pb_out = self.pb_net(s, pb_emb[i + 1]) if pb_emb is not None else None
                mean, var = self._pb_mean_var(s, torch.tensor([i], device=s.device), pb_out)
                std = var.sqrt() if isinstance(var, torch.Tensor) else math.sqrt(var)
                s = mean.reshape(n, d) + std * torch.randn(n, d, device=s.device, generator=generator)
                states.append(s)
            states.append(torch.zeros_like(x))
        S = torch.stack(states[::-1])  # [T+1, B, d]
        need_lr_states = self.flow_type == "forward_looking"
        log_r_states, G = None, None
        if self.langevin or need_lr_states:
            log_r_states, G_all = self._energy_at(S, self.langevin)
            G = None if G_all is None else G_all[:T]
            if log_reward is None:
                log_reward = log_r_states[-1]
        if log_reward is None:
            with torch.no_grad():
                log_reward = self.energy.log_reward(x)
        if log_r_states is not None:
            log_r_states = torch.cat([log_r_states[:T], log_reward[None]], 0)
        _, t_emb, g = self._time_grid()
        log_pf = self._log_pf(S, t_emb, g, G)
        return self._assemble(S, log_pf, self._log_pb(S), log_reward, log_r_states if need_lr_states else None)


def _over_steps(net: StateTimeNet, s: torch.Tensor, t_emb: torch.Tensor, kernels=None) -> torch.Tensor:
    """``net(s [T, B, d], t_emb [T, 1, H])``; for sampled states (no gradient of their own) with a gradient wanted
    for the network, through its recorded pass and hand-written backward (:meth:`StateTimeNet.batched`, native
    when ``kernels`` are given); without one, in the native kernels when given."""
    batched = s.dim() == 3 and not s.requires_grad and t_emb.shape[0] == s.shape[0]
    if batched and torch.is_grad_enabled():
        return net.batched(s, t_emb, kernels)
    if batched and kernels is not None and not t_emb.requires_grad:
        return net.native_forward(s, t_emb, kernels)
    return net(s, t_emb)


def _noise(n: int, d: int, like: torch.Tensor, generator) -> torch.Tensor:
    """One step's N(0, I) noise ``[n, d]``, drawn step by step: the random stream (and so every result for a given
    seed) is the same as with the step-by-step rollout this loop replaced."""
    return torch.randn(n, d, device=like.device, dtype=like.dtype, generator=generator)

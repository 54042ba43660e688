"""The reference engine: the diffusion sampler's forward and backward rollouts in plain PyTorch autograd.

This is the readable definition of what a rollout computes (docs/spec.md §2, docs/design.md "Engines"). Every
formula of a step lives in :mod:`sampler.gfn.heads`; this module strings the steps together:

* **forward rollout** — from s_0 = 0, T Gaussian steps whose drift and variance come from the policy network (plus
  exploration noise ε added in quadrature, sampling only). The states are sampled without autograd; log P_F of the
  whole trajectory is then evaluated with autograd in one batched call of the policy on the stacked ``[T, B, d]``
  states, under the *unexplored* policy. With ``reparam`` (the PIS objective) the states instead carry the gradient
  through the whole chain.
* **backward rollout** — from terminal states x, the Brownian bridge back to 0 (optionally with learned
  corrections), then log P_F and log P_B of those trajectories, with autograd.
* **flows** — a learned scalar log Z, or a state flow log F(s, t) evaluated on the stacked states (the
  forward-looking flow adds the reference process's log-density and t·log r).

Any policy module with the documented signature works here (docs/design.md): ``embed_time(t [T]) -> [T, H]`` and
``forward(s [..., B, d], t_emb [..., 1, H]) -> [..., B, out]`` — a LayerNorm, another activation or a new
architecture needs no other edit. The accelerated engines (:mod:`sampler.gfn.accelerators`) override the primitives
marked below for the networks they implement, and are tested equal to this one.
"""

from __future__ import annotations

import math

import torch

from sampler.gfn.heads import gaussian_log_prob, noise
from sampler.gfn.trajectories import Trajectories


class ReferenceEngine:
    """Rollouts of a :class:`~sampler.gfn.DiffusionGFN` in plain autograd (stateless; one per model)."""

    name = "reference"

    # ------------------------------------------------------------------------------------------------ rollouts
    def rollout_forward(
        self,
        gfn,
        n: int,
        exploration_std: float | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        reparam: bool = False,
    ) -> Trajectories:
        """``n`` forward trajectories of ``gfn`` (see :meth:`sampler.gfn.DiffusionGFN.rollout_forward`)."""
        T = gfn.T
        t_emb, g = self.time_grid(gfn)
        eps2 = 0.0 if exploration_std is None else float(exploration_std) ** 2
        if reparam and torch.is_grad_enabled():
            S, G, log_rs, log_pf = self.rollout_reparam(gfn, n, t_emb, g, eps2, generator)
            log_reward = gfn.energy.log_reward(S[-1])
        else:
            want_grad = torch.is_grad_enabled()
            with torch.no_grad():
                S, G, log_rs, ctx = self.sample_states(gfn, n, t_emb, g, eps2, generator, want_grad)
                log_reward = gfn.energy.log_reward(S[-1])
            log_pf = self.log_pf(gfn, S, t_emb, g, G, ctx)  # with the gradient for the policy, when one is wanted
        log_r_states = None
        if gfn.flow_type == "forward_looking":
            if gfn.langevin:  # log r at every state came with ∇log r in the loop
                log_r_states = torch.cat([torch.stack(log_rs), log_reward.detach()[None]], 0)
            else:
                log_r_states = torch.cat([self.energy_at(gfn, S[:T], False)[0], log_reward.detach()[None]], 0)
        return self.assemble(gfn, S, log_pf, self.log_pb(gfn, S), log_reward, log_r_states)

    def rollout_backward(
        self,
        gfn,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        log_reward: torch.Tensor | None = None,
    ) -> Trajectories:
        """Brownian-bridge trajectories of ``gfn`` ending at ``x [B, d]`` (see
        :meth:`sampler.gfn.DiffusionGFN.rollout_backward`)."""
        T, d = gfn.T, gfn.dim
        n = x.shape[0]
        s = x
        states = [x]
        with torch.no_grad():  # the bridge from x back to s_0 = 0
            pb_emb = gfn.pb_net.embed_time(gfn.times) if gfn.pb_net is not None else None
            for i in range(T - 1, 0, -1):
                pb_out = gfn.pb_net(s, pb_emb[i + 1]) if pb_emb is not None else None
                mean, var = gfn.bridge.mean_var(s, torch.tensor([i], device=s.device), pb_out)
                std = var.sqrt() if isinstance(var, torch.Tensor) else math.sqrt(var)
                s = mean.reshape(n, d) + std * torch.randn(n, d, device=s.device, generator=generator)
                states.append(s)
            states.append(torch.zeros_like(x))
        S = torch.stack(states[::-1])  # [T+1, B, d]
        need_lr_states = gfn.flow_type == "forward_looking"
        log_r_states, G = None, None
        if gfn.langevin or need_lr_states:
            log_r_states, G_all = self.energy_at(gfn, S, gfn.langevin)
            G = None if G_all is None else G_all[:T]
            if log_reward is None:
                log_reward = log_r_states[-1]
        if log_reward is None:
            with torch.no_grad():
                log_reward = gfn.energy.log_reward(x)
        if log_r_states is not None:
            log_r_states = torch.cat([log_r_states[:T], log_reward[None]], 0)
        t_emb, g = self.time_grid(gfn)
        log_pf = self.log_pf(gfn, S, t_emb, g, G, None)
        return self.assemble(gfn, S, log_pf, self.log_pb(gfn, S), log_reward, log_r_states if need_lr_states else None)

    def rollout_reparam(self, gfn, n: int, t_emb, g, eps2: float, generator):
        """The PIS rollout: the states carry the gradient through the whole chain.

        Returns:
            ``(states [T+1, B, d], ∇log r [T, B, d] or None, [log r per step], log P_F [T, B])``.
        """
        S, G, log_rs, means, log_vars = self._chain(gfn, n, t_emb, g, eps2, generator)
        lv = torch.stack(log_vars) if gfn.learned_variance else 0.0
        log_pf = gaussian_log_prob(S[1:], S[:-1] + gfn.dt * torch.stack(means), gfn.head.variance(lv))
        return S, G, log_rs, log_pf

    def _chain(self, gfn, n: int, t_emb, g, eps2: float, generator):
        """The T Gaussian steps from s_0 = 0 (with autograd when it is on: the PIS rollout differentiates through
        them; the sampling loop runs them without).

        Returns:
            ``(states [T+1, B, d], ∇log r [T, B, d] or None, [log r per step], [drift per step],
            [log-variance multiplier per step])``.
        """
        T, d, dt = gfn.T, gfn.dim, gfn.dt
        s = torch.zeros(n, d, device=t_emb.device)
        states, grads, log_rs, means, log_vars = [s], [], [], [], []
        for i in range(T):
            gi = None
            if gfn.langevin:
                lr_i, gi = gfn.energy.log_reward_and_grad(s.detach())
                log_rs.append(lr_i)
                grads.append(gi)
            mean, log_var = gfn.head(gfn.policy_fn(s, t_emb[i]), None if g is None else g[i], gi)
            var = gfn.head.variance(log_var)
            std = torch.sqrt(var + eps2) if isinstance(var, torch.Tensor) else math.sqrt(var + eps2)
            s = s + dt * mean + std * noise(n, d, s, generator)
            states.append(s)
            means.append(mean)
            log_vars.append(log_var)
        return torch.stack(states), (torch.stack(grads) if gfn.langevin else None), log_rs, means, log_vars

    # -------------------------------------------------------------------- primitives (accelerated engines override)
    def sample_states(self, gfn, n: int, t_emb, g, eps2: float, generator, want_grad: bool):
        """The sampling loop, without autograd.

        Args:
            gfn: the model.
            n: batch size B.
            t_emb: ``[T+1, H]`` time embedding of the grid; g: ``[T+1, 1 or d]`` Langevin scale or None.
            eps2: ε², exploration variance added to every step's (sampling only).
            generator: the noise source.
            want_grad: the caller will want log P_F with a gradient (an engine may record what it needs for it).

        Returns:
            ``(states [T+1, B, d], ∇log r [T, B, d] or None, [log r per step], ctx)``; ``ctx`` is whatever this
            engine's :meth:`log_pf` needs besides the states (nothing here).
        """
        S, G, log_rs, _, _ = self._chain(gfn, n, t_emb, g, eps2, generator)
        return S, G, log_rs, None

    def log_pf(self, gfn, S: torch.Tensor, t_emb, g, G, ctx) -> torch.Tensor:
        """``[T, B]`` log P_F(s_{i+1} | s_i) of the states ``S [T+1, B, d]`` under the unexplored policy, batched over
        steps (with a gradient for the policy when autograd is on); ``G``: ∇log r at ``S[:T]`` (Langevin)."""
        T = gfn.T
        s, s_next = S[:T], S[1:]
        raw = gfn.policy_fn(s, t_emb[:T, None])
        mean, log_var = gfn.head(raw, None if g is None else g[:T, None], G)
        return gaussian_log_prob(s_next, s + gfn.dt * mean, gfn.head.variance(log_var))

    def log_pb(self, gfn, S: torch.Tensor) -> torch.Tensor:
        """``[T, B]`` log P_B(s_i | s_{i+1}) for states ``[T+1, B, d]``; the step to s_0 is deterministic (0)."""
        T = gfn.T
        idx = torch.arange(1, T, device=S.device)
        s_next, s_prev = S[2:], S[1:T]  # [T-1, B, d]
        pb_out = None
        if gfn.pb_net is not None:
            pb_out = self.net_over_steps(gfn.pb_net, s_next, gfn.pb_net.embed_time(gfn.times[2:])[:, None])
        mean, var = gfn.bridge.mean_var(s_next, idx, pb_out)
        var = var.expand_as(s_prev) if isinstance(var, torch.Tensor) else var
        lp = gaussian_log_prob(s_prev, mean, var)  # [T-1, B]
        return torch.cat([lp.new_zeros(1, S.shape[1]), lp], 0)

    def net_over_steps(self, net, s: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """``net(s [T, B, d], t_emb [T, 1, H])``: a network over every step's states at once."""
        return net(s, t_emb)

    # ------------------------------------------------------------------------------------------------- shared
    @staticmethod
    def time_grid(gfn):
        """``(t_emb [T+1, H], g [T+1, 1 or d] or None)``: the policy's time embedding and the Langevin scale on the
        time grid, computed once per rollout (with autograd: both are trained)."""
        t_emb = gfn.policy.embed_time(gfn.times)
        g = gfn.lgv_scale(gfn.times) if gfn.langevin else None
        return t_emb, g

    @staticmethod
    def energy_at(gfn, states: torch.Tensor, need_grad: bool):
        """log r (and ∇log r) at ``states [T', B, d]`` in one batched call."""
        flat = states.reshape(-1, gfn.dim)
        if need_grad:
            lr, grad = gfn.energy.log_reward_and_grad(flat)
            return lr.reshape(states.shape[:-1]), grad.reshape(states.shape)
        with torch.no_grad():
            return gfn.energy.log_reward(flat).reshape(states.shape[:-1]), None

    def log_flows(self, gfn, S: torch.Tensor, log_r_states, log_reward: torch.Tensor) -> torch.Tensor:
        """``[B, T+1]`` log-flows of a state-flow model; the terminal column is log r."""
        T = gfn.T
        inner = S[:T]  # [T, B, d]
        f_emb = gfn.flow_net.embed_time(gfn.times[:T])[:, None]  # [T, 1, H]
        F = self.net_over_steps(gfn.flow_net, inner, f_emb).squeeze(-1)  # [T, B]
        if gfn.flow_type == "forward_looking":  # F = NN + (1 − t)·log p_ref(s, t) + t·log r(s)
            t = gfn.times[:T, None]  # [T, 1]
            i = torch.arange(T, device=S.device, dtype=S.dtype)
            ref_var = (gfn.t_scale * gfn.dt * torch.clamp(i, min=1.0))[:, None, None]  # [T, 1, 1]
            ref = gaussian_log_prob(inner, torch.zeros((), device=S.device), ref_var.expand_as(inner[..., :1]))
            F = F + (1 - t) * ref + t * log_r_states[:T]
        return torch.cat([F, log_reward[None]], 0).transpose(0, 1)  # [B, T+1]

    def assemble(self, gfn, S: torch.Tensor, log_pf, log_pb, log_reward, log_r_states) -> Trajectories:
        """The batch-first :class:`Trajectories` of step-first tensors."""
        log_flow, log_Z = None, None
        if gfn.flow_type == "scalar":
            log_Z = gfn.log_Z
        else:
            log_flow = self.log_flows(gfn, S, log_r_states, log_reward)
            log_Z = log_flow[:, 0]
        return Trajectories(
            states=S.transpose(0, 1),
            log_pf=log_pf.transpose(0, 1),
            log_pb=log_pb.transpose(0, 1),
            log_reward=log_reward,
            log_Z=log_Z,
            log_flow=log_flow,
            log_reward_states=None if log_r_states is None else log_r_states.transpose(0, 1),
        )

"""Generative augmented flow networks (GAFN; Pan et al. 2023, https://arxiv.org/abs/2210.03308): an intrinsic reward
from random network distillation (RND) added to the terminal reward and to the intermediate transitions, so that
states the model has rarely visited look rewarding until the predictor has learned them.

With novelty ν(s) = scale·‖f̂(s) − f(s)‖ (f a fixed random network, f̂ a predictor trained to match it on visited
states), trajectory balance is applied to the augmented trajectory:

* terminal reward r(x) + ν(x);
* every move into a state s' that does not end the trajectory by arriving there: P_B(s | s') + ν(s')/F(s') in place of
  P_B(s | s'), F a learned state flow.

This is how the Adaptive Teachers grid code applies it (its flow is an extra output of the policy network; here it is a
network of its own, or the GFN's state flow when it has one).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from sampler.discrete.gfn import StateMLP
from sampler.gfn.trajectories import Trajectories


class RND(nn.Module):
    """Random network distillation on a state's encoding: a fixed random target network and a trained predictor
    (each obs → hidden → hidden → latent, LeakyReLU).

    Args:
        obs_dim: encoding width.
        hidden_dim, latent_dim: widths (256 and 128 in the GAFN grid code).
    """

    def __init__(self, obs_dim: int, hidden_dim: int = 256, latent_dim: int = 128):
        super().__init__()

        def mlp() -> nn.Sequential:
            return nn.Sequential(
                nn.Linear(obs_dim, hidden_dim), nn.LeakyReLU(), nn.Linear(hidden_dim, hidden_dim), nn.LeakyReLU(),
                nn.Linear(hidden_dim, latent_dim),
            )  # fmt: skip

        self.target = mlp().requires_grad_(False)
        self.predictor = mlp()

    def error(self, obs: Tensor) -> Tensor:
        """``[N]`` ‖f̂(obs) − f(obs)‖ (with the predictor's gradient)."""
        return (self.predictor(obs) - self.target(obs)).norm(dim=-1)


class GAFN(nn.Module):
    """The GAFN augmentation of a discrete GFN's trajectories, and the RND predictor's loss.

    Args:
        gfn: the :class:`~sampler.discrete.DiscreteGFN` whose trajectories are augmented.
        scale: multiplier of the intrinsic reward (0.5 in the Adaptive Teachers grid code).
        edge: also augment the intermediate transitions (needs a state flow); ``False``: terminal reward only.
        loss_weight: weight of the RND loss in :meth:`loss`.
        hidden_dim, latent_dim: RND widths; the own state flow (when the GFN has none) uses the GFN's width.
    """

    def __init__(
        self,
        gfn,
        scale: float = 0.5,
        edge: bool = True,
        loss_weight: float = 1.0,
        hidden_dim: int = 256,
        latent_dim: int = 128,
    ):
        super().__init__()
        if not scale >= 0:
            raise ValueError(f"gafn.scale must be >= 0 (got {scale})")
        object.__setattr__(self, "gfn", gfn)  # not a sub-module: its parameters are trained by its own groups
        env = gfn.env
        self.scale, self.edge, self.loss_weight = float(scale), bool(edge), float(loss_weight)
        self.rnd = RND(env.obs_dim, hidden_dim, latent_dim)
        self.flow_net = self.flow_head = None
        if self.edge and gfn.flow_net is None:
            width = gfn.trunk.out_dim
            self.flow_net = StateMLP(env.obs_dim, width, gfn.trunk.num_layers)
            self.flow_head = nn.Linear(width, 1)

    def novelty(self, s: Tensor) -> Tensor:
        """``[N]`` ν(s) = scale·‖f̂(s) − f(s)‖ for states ``[N, ndim]`` (detached: a reward, not a loss)."""
        with torch.no_grad():
            return self.scale * self.rnd.error(self.gfn.env.encode(s))

    def _log_flow(self, s: Tensor) -> Tensor:
        if self.flow_net is None:
            return self.gfn.log_flow_at(s)
        return self.flow_head(self.gfn._hidden(self.flow_net, s)).squeeze(-1)

    def augment(self, traj: Trajectories) -> Trajectories:
        """The trajectories with the augmented terminal reward and (``edge``) backward log-probabilities.

        Args:
            traj: discrete trajectories (``mask`` set), e.g. from ``gfn.rollout_forward``.

        Returns:
            A new :class:`Trajectories`; the TB loss on it is GAFN's objective.
        """
        env = self.gfn.env
        x = traj.terminal_states
        log_reward = torch.logaddexp(traj.log_reward, self.novelty(x).log())
        log_pb = traj.log_pb
        if self.edge:
            S = traj.states
            nxt = S[:, 1:]  # [B, T, ndim] the state each transition arrives at
            moves = traj.mask & (nxt != S[:, :-1]).any(-1)  # the stop transition repeats x
            aug = moves & ~env.is_forced_terminal(nxt)
            where = aug.nonzero(as_tuple=True)
            s_aug = nxt[where]
            extra = self.novelty(s_aug).log() - self._log_flow(s_aug)  # log(ν(s')/F(s'))
            log_pb = log_pb.index_put(where, torch.logaddexp(log_pb[where], extra))
        log_flow = traj.log_flow
        if log_flow is not None:
            log_flow = log_flow.scatter(1, traj.mask.sum(1, keepdim=True), log_reward[:, None])
        return replace(traj, log_reward=log_reward, log_pb=log_pb, log_flow=log_flow)

    def loss(self, traj: Trajectories) -> Tensor:
        """``loss_weight`` × the RND predictor's mean error on the real states of ``traj`` (scalar)."""
        B, T1 = traj.states.shape[:2]
        real = torch.arange(T1, device=traj.states.device)[None] <= traj.mask.sum(1, keepdim=True)
        return self.loss_weight * self.rnd.error(self.gfn.env.encode(traj.states[real])).mean()

    def param_groups(self, lr_rnd: float = 1e-3, lr_flow: float = 1e-3) -> list[dict]:
        """Optimiser groups: the RND predictor, and the own state flow when there is one."""
        groups = [{"params": list(self.rnd.predictor.parameters()), "lr": lr_rnd, "name": "gafn_rnd"}]
        if self.flow_net is not None:
            params = list(self.flow_net.parameters()) + list(self.flow_head.parameters())
            groups.append({"params": params, "lr": lr_flow, "name": "gafn_flow"})
        return groups

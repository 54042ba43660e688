"""The discrete GFlowNet: a masked categorical policy on a DAG of integer states (Bengio et al. 2021,
https://arxiv.org/abs/2106.04399; trajectory balance: Malkin et al. 2022, https://arxiv.org/abs/2201.13259).

:class:`DiscreteGFN` has the same interface as the diffusion sampler (``rollout_forward``, ``rollout_backward``,
``policy_parameters``, ``flow_parameters``, ``backward_parameters``), and its rollouts return the same
:class:`~sampler.gfn.trajectories.Trajectories`, so the objectives in :mod:`sampler.losses` apply unchanged.

Trajectory layout (``T`` = the longest trajectory of the batch):

* ``states [B, T+1, ndim]``: integer coordinates stored as float (replay buffers keep float states); ``s_0`` first. A
  stop transition repeats the terminal state x (it stands for the sink), and the padding after the end repeats x too.
* ``mask [B, T]``: real transitions, the stop transition included; ``L = mask.sum(1)`` and ``states[:, L] = x``.
* ``log_pf [B, T]``: log P_F(a_t | s_t) under the trained policy (temperature 1, no ε), 0 on padding.
* ``log_pb [B, T]``: log P_B(s_t | s_{t+1}) for moves; 0 for the stop transition (the sink has one parent per x) and
  on padding.
* ``log_flow [B, T+1]`` (state flows): log F(s_t), with ``log_flow[:, L] = log r(x)``. Then DB's last residual is
  log F(x) + log P_F(stop | x) − log r(x) for a stopped trajectory, and log F(s) + log P_F(a | s) − log P_B(s | x) −
  log r(x) for one that ended on arrival at x.

Sampling (``rollout_forward``) runs without autograd on the still-running rows only; log P_F, log P_B and the flows
are then evaluated with autograd in one batched pass over all real states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sampler.discrete.env import DiscreteEnv, as_states
from sampler.gfn.trajectories import Trajectories

FLOWS = ("scalar", "conditional")
BACKWARD_POLICIES = ("uniform", "learned")
#: K-hot encodings up to this width are expanded to a dense one-hot matrix (faster than an embedding sum on CPU).
DENSE_KHOT_MAX = 512
ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "elu": nn.ELU}


class StateMLP(nn.Module):
    """MLP on a state's encoding: ``num_layers`` hidden layers of ``hidden_dim`` units.

    The first layer reads either dense features ``[N, in_dim]`` or the indices ``[N, K]`` of the ones of a K-hot
    encoding; for the latter it sums the weight rows of those indices (``F.embedding_bag``), which is the same linear
    map without materialising the one-hot matrix. Initialisation as ``nn.Linear``'s.

    Args:
        in_dim: encoding width (``env.obs_dim``).
        hidden_dim: units per hidden layer.
        num_layers: hidden layers (≥ 1).
        activation: one of ``relu``, ``leaky_relu``, ``gelu``, ``elu``.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 256, num_layers: int = 2, activation: str = "relu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"model.activation must be one of {', '.join(ACTIVATIONS)} (got {activation})")
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"model.num_layers must be a whole number >= 1 (got {num_layers!r})")
        if not isinstance(hidden_dim, int) or hidden_dim < 1:
            raise ValueError(f"model.hidden_dim must be a whole number >= 1 (got {hidden_dim!r})")
        bound = 1.0 / math.sqrt(in_dim)
        self.first_weight = nn.Parameter(torch.empty(in_dim, hidden_dim).uniform_(-bound, bound))  # [in, H]
        self.first_bias = nn.Parameter(torch.empty(hidden_dim).uniform_(-bound, bound))
        act = ACTIVATIONS[activation]
        layers: list[nn.Module] = [act()]
        for _ in range(num_layers - 1):
            layers += [nn.Linear(hidden_dim, hidden_dim), act()]
        self.rest = nn.Sequential(*layers)
        self.out_dim, self.num_layers = hidden_dim, num_layers

    def forward(self, index: Tensor | None = None, dense: Tensor | None = None) -> Tensor:
        """Hidden features ``[N, hidden_dim]`` of K-hot ``index [N, K]`` or of ``dense [N, in_dim]``."""
        if index is not None and self.first_weight.shape[0] > DENSE_KHOT_MAX:
            h = F.embedding_bag(index, self.first_weight, mode="sum") + self.first_bias
        elif index is not None:  # small encodings: a one-hot matrix and one matmul are faster than the gather
            dense = self.first_weight.new_zeros(index.shape[0], self.first_weight.shape[0])
            h = torch.addmm(self.first_bias, dense.scatter_(1, index, 1.0), self.first_weight)
        else:
            h = dense @ self.first_weight + self.first_bias
        return self.rest(h)


class DiscreteGFN(nn.Module):
    """GFlowNet sampler of a discrete target.

    Args:
        env: the target (:class:`~sampler.discrete.env.DiscreteEnv`; kept as a plain attribute, not a sub-module).
        hidden_dim, num_layers, activation: the policy MLP (2×256 ReLU by default) on the state encoding.
        pb: backward policy: ``uniform`` over the valid parents, or ``learned`` (a head on the policy's hidden
            features, masked to the valid parents; its parameters are :meth:`backward_parameters`).
        flow: ``scalar`` (a learned log Z, for TB/VarGrad) or ``conditional`` (a state-flow MLP log F(s), needed by
            DB/SubTB; log Z = log F(s_0)).
        log_Z_init: initial scalar log Z.
        temperature: default sampling temperature of the forward logits (sampling only: log P_F in the losses is
            always at temperature 1).
        tabulate: evaluate the networks once on every state of an enumerated target and read rollouts from the
            tables (the same numbers, faster when the states are fewer than the steps a batch takes): ``auto`` (when
            ``n_states ≤ B · max_steps``), ``True`` (whenever the target is enumerated) or ``False``.

    Attributes:
        energy: the target, under the name the training code uses for every sampler.
    """

    def __init__(
        self,
        env: DiscreteEnv,
        hidden_dim: int = 256,
        num_layers: int = 2,
        activation: str = "relu",
        pb: str = "uniform",
        flow: str = "scalar",
        log_Z_init: float = 0.0,
        temperature: float = 1.0,
        tabulate: str | bool = "auto",
    ):
        super().__init__()
        if not getattr(env, "discrete", False):
            raise ValueError(f"DiscreteGFN needs a discrete target (a DiscreteEnv); got {type(env).__name__}")
        if flow not in FLOWS:
            raise ValueError(f"model.flow must be one of {', '.join(FLOWS)} for a discrete target (got {flow})")
        if pb not in BACKWARD_POLICIES:
            raise ValueError(f"model.pb must be one of {', '.join(BACKWARD_POLICIES)} (got {pb})")
        object.__setattr__(self, "energy", env)  # not registered: its state is not ours
        self.dim, self.n_actions = env.ndim, env.n_actions
        self.flow_type, self.pb_type = flow, pb
        self.temperature = _positive(temperature, "model.temperature")
        if tabulate not in ("auto", True, False):
            raise ValueError(f"model.tabulate must be auto, true or false (got {tabulate!r})")
        self.tabulate = tabulate
        self._dag_cache: dict = {}  # per device: the enumerated DAG's tables (see _dag)
        self.trunk = StateMLP(env.obs_dim, hidden_dim, num_layers, activation)
        self.pf_head = nn.Linear(hidden_dim, env.n_actions)
        self.pb_head = nn.Linear(hidden_dim, env.n_actions - 1) if pb == "learned" else None
        if flow == "scalar":
            self.log_Z = nn.Parameter(torch.tensor(float(log_Z_init)))
            self.flow_net = self.flow_head = None
        else:
            self.log_Z = None
            self.flow_net = StateMLP(env.obs_dim, hidden_dim, num_layers, activation)
            self.flow_head = nn.Linear(hidden_dim, 1)

    @property
    def env(self) -> DiscreteEnv:
        return self.energy

    # ----------------------------------------------------------------------------------------------- parameters
    def policy_parameters(self) -> list[nn.Parameter]:
        """The forward policy (hidden layers, which a learned P_B shares, and the forward head): lr_policy."""
        return list(self.trunk.parameters()) + list(self.pf_head.parameters())

    def flow_parameters(self) -> list[nn.Parameter]:
        """log Z, or the state-flow network: lr_flow."""
        if self.log_Z is not None:
            return [self.log_Z]
        return list(self.flow_net.parameters()) + list(self.flow_head.parameters())

    def backward_parameters(self) -> list[nn.Parameter]:
        """The learned P_B head (``pb=learned``): lr_back."""
        return list(self.pb_head.parameters()) if self.pb_head is not None else []

    # ------------------------------------------------------------------------------------------------ networks
    def _hidden(self, net: StateMLP, s: Tensor) -> Tensor:
        index = self.env.khot_index(s)
        return net(index=index) if index is not None else net(dense=self.env.encode(s))

    def log_policy(self, s: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """``[N, n_actions]`` log P_F(· | s) at temperature 1 (−inf on invalid actions) for states ``[N, ndim]``;
        the softmax in ``dtype`` when given (float64 for exact distributions)."""
        logits = self.pf_head(self._hidden(self.trunk, s))
        logits = logits if dtype is None else logits.to(dtype)
        return logits.masked_fill(~self.env.forward_mask(s), -math.inf).log_softmax(-1)

    def log_flow_at(self, s: Tensor) -> Tensor:
        """``[N]`` log F(s) of the state-flow network (``flow=conditional``)."""
        return self.flow_head(self._hidden(self.flow_net, s)).squeeze(-1)

    @property
    def log_Z_learned(self) -> Tensor:
        """The learned log Z: the scalar parameter, or log F(s_0) of the state flow."""
        if self.log_Z is not None:
            return self.log_Z
        return self.log_flow_at(self.env.s0[None])[0]

    # ---------------------------------------------------------------------------------------- tabulated DAG
    def _use_tables(self, n_rows: int) -> bool:
        """Whether a batch of ``n_rows`` trajectories reads the networks from tables over every state."""
        env = self.env
        if self.tabulate is False or not env.exact:
            return False
        return self.tabulate is True or env.n_states <= n_rows * env.max_steps

    @torch.no_grad()
    def _dag(self) -> dict[str, Tensor]:
        """The enumerated DAG (computed once per device): every state, its forward mask, the index of the state each
        action leads to (itself for invalid ones), whether it is forced-terminal, its backward mask, −log(#parents)."""
        env = self.env
        dev = env.s0.device
        tab = self._dag_cache.get(dev)
        if tab is None:
            S = env.all_states().to(dev)  # [N, ndim], index order
            N, A = S.shape[0], env.n_actions
            fmask = env.forward_mask(S)
            actions = torch.arange(A, device=dev).expand(N, A)
            child = env.state_index(env.step(S[:, None].expand(N, A, S.shape[1]), actions))
            child = torch.where(fmask, child, torch.arange(N, device=dev)[:, None])
            bmask = env.backward_mask(S)
            tab = {
                "states": S, "fmask": fmask, "child": child, "forced": env.is_forced_terminal(S), "bmask": bmask,
                "log_pb_uniform": -bmask.sum(-1).clamp(min=1).float().log(),
            }  # fmt: skip
            self._dag_cache[dev] = tab
        return tab

    def _tables(self) -> dict[str, Tensor]:
        """The networks on every state (with autograd when it is on): forward logits and log-probabilities, the
        learned backward log-probabilities, the state flows."""
        dag = self._dag()
        S = dag["states"]
        h = self._hidden(self.trunk, S)
        logits = self.pf_head(h)
        out = {"logits": logits, "log_pf": logits.masked_fill(~dag["fmask"], -math.inf).log_softmax(-1)}
        if self.pb_head is not None:
            out["log_pb"] = self.pb_head(h).masked_fill(~dag["bmask"], -math.inf).log_softmax(-1)
        if self.flow_net is not None:
            out["log_flow"] = self.log_flow_at(S)
        return out

    @torch.no_grad()
    def _sample_tabulated(
        self, n: int, logits: Tensor, epsilon: float, temperature: float, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`_sample` from s_0 on state indices, reading the sampling distribution from a table of every
        state's CDF (the same draws as :meth:`_sample` up to float rounding)."""
        env, dag = self.env, self._dag()
        mask = dag["fmask"]
        logits = logits.detach().double()
        logits = logits if temperature == 1.0 else logits / temperature
        probs = torch.where(mask, logits, -math.inf).softmax(-1)  # [N, A]
        if epsilon > 0:
            probs = (1 - epsilon) * probs + epsilon * mask / mask.sum(-1, keepdim=True)
        cdf = probs.cumsum(-1)
        cdf = cdf / cdf[:, -1:]  # the last column is exactly 1, so a draw u < 1 never passes it
        child, forced, stop = dag["child"], dag["forced"], env.stop
        dev = cdf.device
        start = env.state_index(env.s0[None])
        active = torch.arange(n, device=dev)
        cur = start.expand(n)
        rows, acts, nexts = [], [], []
        for _ in range(env.max_steps):
            if active.numel() == 0:
                break
            u = torch.rand(cur.shape[0], 1, generator=generator, device=dev, dtype=torch.float64)
            a = (cdf[cur] <= u).sum(-1)
            nxt = child[cur, a]
            rows.append(active)
            acts.append(a)
            nexts.append(nxt)
            keep = a != stop
            if env.forced_termination:
                keep = keep & ~forced[nxt]
            active, cur = active[keep], nxt[keep]
        T = len(rows)
        step_of = torch.cat([torch.full_like(r, t) for t, r in enumerate(rows)])
        row_of = torch.cat(rows)
        lengths = torch.bincount(row_of, minlength=n)
        A = torch.full((n, T), -1, dtype=torch.long, device=dev).index_put_((row_of, step_of), torch.cat(acts))
        idx = start.expand(n, T + 1).clone().index_put_((row_of, step_of + 1), torch.cat(nexts))
        last = idx.gather(1, lengths[:, None])  # [B, 1] terminal state's index
        idx = torch.where(torch.arange(T + 1, device=dev)[None] > lengths[:, None], last, idx)
        return idx, A, lengths

    def _evaluate_tabulated(
        self, idx: Tensor, actions: Tensor, lengths: Tensor, log_reward: Tensor | None, tables: dict[str, Tensor]
    ) -> Trajectories:
        """:meth:`evaluate` for trajectories given as state indices ``[B, T+1]``, by gathering from ``tables``."""
        env, dag = self.env, self._dag()
        B, T1 = idx.shape
        T = T1 - 1
        mask = torch.arange(T, device=idx.device)[None] < lengths[:, None]
        a = actions.clamp(min=0)
        log_pf = tables["log_pf"][idx[:, :T], a].masked_fill(~mask, 0.0)
        is_move = mask & (actions != env.stop)
        if self.pb_head is not None:
            log_pb = tables["log_pb"][idx[:, 1:], a.clamp(max=env.n_actions - 2)]
        else:
            log_pb = dag["log_pb_uniform"][idx[:, 1:]]
        log_pb = log_pb.masked_fill(~is_move, 0.0)
        S = dag["states"][idx]  # [B, T+1, ndim]
        if log_reward is None:
            log_reward = env.checked_log_reward(S[torch.arange(B, device=idx.device), lengths])
        log_reward = log_reward.float()
        log_flow, log_Z = None, self.log_Z
        if self.flow_net is not None:
            after = torch.arange(T1, device=idx.device)[None] > lengths[:, None]
            log_flow = tables["log_flow"][idx].masked_fill(after, 0.0)  # 0 on padding, as in evaluate
            log_flow = log_flow.scatter(1, lengths[:, None], log_reward[:, None])
            log_Z = log_flow[:, 0]
        return Trajectories(
            states=S.float(), log_pf=log_pf, log_pb=log_pb, log_reward=log_reward, log_Z=log_Z, log_flow=log_flow,
            mask=mask,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def _sample(
        self, start: Tensor, epsilon: float, temperature: float, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Forward sampling from the states ``start [B, ndim]`` (long) until every row has terminated.

        Each step evaluates the policy on the rows still running only. The sampling distribution is
        ``(1 − ε)·softmax(logits / temperature) + ε·uniform(valid actions)``.

        Returns:
            ``(states [B, T+1, ndim] long, actions [B, T] long with −1 after the end, lengths [B])``.
        """
        env = self.env
        B, stop, dev = start.shape[0], env.stop, start.device
        forced = env.forced_termination
        active = torch.arange(B, device=dev)  # rows still running
        if forced:
            active = active[~env.is_forced_terminal(start)]
        sa = start[active]  # their current states
        rows, acts, nexts = [], [], []  # per step: running rows, their actions and next states
        for _ in range(env.max_steps):
            if active.numel() == 0:
                break
            mask = env.forward_mask(sa)
            logits = self.pf_head(self._hidden(self.trunk, sa))
            if temperature != 1.0:
                logits = logits / temperature
            probs = torch.where(mask, logits, -math.inf).softmax(-1)
            if epsilon > 0:
                probs = (1 - epsilon) * probs + epsilon * mask / mask.sum(-1, keepdim=True)
            a = _categorical(probs, generator)
            s_next = env.step(sa, a)
            rows.append(active)
            acts.append(a)
            nexts.append(s_next)
            keep = a != stop
            if forced:
                keep = keep & ~env.is_forced_terminal(s_next)
            active, sa = active[keep], s_next[keep]
        if active.numel():
            raise RuntimeError(f"{env.name}: trajectories did not terminate within max_steps={env.max_steps}")
        T = len(rows)
        if T == 0:  # every start state was terminal
            return start[:, None], torch.empty(B, 0, dtype=torch.long, device=dev), active.new_zeros(B)
        # assemble [B, T+1] once: step t wrote state t+1 and action t of its running rows
        step_of = torch.cat([torch.full_like(r, t) for t, r in enumerate(rows)])
        row_of = torch.cat(rows)
        lengths = torch.bincount(row_of, minlength=B)
        A = torch.full((B, T), -1, dtype=torch.long, device=dev).index_put_((row_of, step_of), torch.cat(acts))
        S = start[:, None].repeat(1, T + 1, 1).index_put_((row_of, step_of + 1), torch.cat(nexts))
        x = S[torch.arange(B, device=dev), lengths]  # [B, ndim] terminal states
        after = torch.arange(T + 1, device=dev)[None] > lengths[:, None]
        S = torch.where(after[..., None], x[:, None], S)  # padding repeats x
        return S, A, lengths

    @torch.no_grad()
    def _sample_backward(self, x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
        """Parent chains from the terminal states ``x [B, ndim]`` back to s_0 under P_B, laid out forward.

        Returns:
            ``(states [B, T+1, ndim] long, actions [B, T] long, lengths [B])`` as :meth:`_sample`.
        """
        env = self.env
        B, stop = x.shape[0], env.stop
        s0 = env.s0
        s = x
        chain, moves = [x], []
        done = (s == s0).all(-1)
        for _ in range(env.max_steps):
            if bool(done.all()):
                break
            bmask = env.backward_mask(s) | done[:, None]  # a finished row samples anything, then stays put
            if self.pb_head is not None:
                logits = self.pb_head(self._hidden(self.trunk, s)).masked_fill(~bmask, -math.inf)
                probs = logits.softmax(-1)
            else:
                probs = bmask.float()
            a = _categorical(probs, generator)
            s = torch.where(done[:, None], s, env.parent(s, a))
            chain.append(s)
            moves.append(torch.where(done, -1, a))
            done = done | (s == s0).all(-1)
        C = torch.stack(chain)  # [K+1, B, ndim], C[k] = state k moves before x
        M = torch.stack(moves) if moves else torch.empty(0, B, dtype=torch.long, device=x.device)  # [K, B]
        n_moves = (M >= 0).sum(0)  # [B]
        stops = ~env.is_forced_terminal(x)  # trajectories that end with the stop action
        lengths = n_moves + stops.long()
        T = int(lengths.max()) if B else 0
        t = torch.arange(T + 1, device=x.device)[:, None]  # [T+1, 1]
        src = (n_moves[None] - t).clamp(min=0)  # state t of the forward trajectory is C[n_moves − t]
        S = C.gather(0, src[..., None].expand(T + 1, B, x.shape[1]))  # [T+1, B, ndim]; t ≥ n_moves gives x
        act_src = (n_moves[None] - 1 - t[:T]).clamp(min=0)  # action t is the move undone at chain step n − 1 − t
        A = M.gather(0, act_src.clamp(max=max(M.shape[0] - 1, 0))) if M.shape[0] else act_src.new_full((T, B), -1)
        tt = t[:T]
        A = torch.where(tt < n_moves[None], A, torch.where((tt == n_moves[None]) & stops[None], stop, -1))
        return S.transpose(0, 1), A.transpose(0, 1), lengths

    # ------------------------------------------------------------------------------------------ log-probabilities
    def evaluate(
        self, states: Tensor, actions: Tensor, lengths: Tensor, log_reward: Tensor | None = None
    ) -> Trajectories:
        """The :class:`Trajectories` of given state sequences, with log P_F, log P_B and flows under autograd.

        Args:
            states: ``[B, T+1, ndim]`` (long, or float holding whole numbers), s_0 first, x repeated after the end.
            actions: ``[B, T]`` long, −1 after the end.
            lengths: ``[B]`` number of transitions of each trajectory (the stop transition included).
            log_reward: ``[B]`` log r(x) to use instead of the target's (e.g. a teacher's or an augmented reward).

        Returns:
            Trajectories as described in the module docstring.
        """
        env = self.env
        S = as_states(states)
        B, T1, _ = S.shape
        if self._use_tables(B):
            return self._evaluate_tabulated(env.state_index(S), actions, lengths, log_reward, self._tables())
        T = T1 - 1
        pos = torch.arange(T1, device=S.device)
        mask = pos[None, :T] < lengths[:, None]  # [B, T] real transitions
        need_next = self.pb_head is not None or self.flow_net is not None
        sel = pos[None] <= lengths[:, None] if need_next else torch.cat([mask, mask.new_zeros(B, 1)], 1)
        flat = sel.reshape(-1).nonzero().squeeze(1)  # rows of [B·(T+1)] whose outputs are needed
        Sv = S.reshape(-1, S.shape[-1])[flat]
        h = self._hidden(self.trunk, Sv)
        logits = _scatter_rows(self.pf_head(h), flat, B * T1).reshape(B, T1, -1)[:, :T]
        a = actions.clamp(min=0)
        fmask = env.forward_mask(S[:, :T]) | ~mask[..., None]  # padding: all valid, so no row is all −inf
        log_pf = logits.masked_fill(~fmask, -math.inf).log_softmax(-1).gather(-1, a[..., None]).squeeze(-1)
        log_pf = log_pf.masked_fill(~mask, 0.0)
        is_move = mask & (actions != env.stop)
        bmask = env.backward_mask(S[:, 1:]) | ~is_move[..., None]
        if self.pb_head is not None:
            blogits = _scatter_rows(self.pb_head(h), flat, B * T1).reshape(B, T1, -1)[:, 1:]
            blogp = blogits.masked_fill(~bmask, -math.inf).log_softmax(-1)
            log_pb = blogp.gather(-1, a.clamp(max=env.n_actions - 2)[..., None]).squeeze(-1)
        else:
            log_pb = -bmask.sum(-1).clamp(min=1).float().log()
        log_pb = log_pb.masked_fill(~is_move, 0.0)
        x = S[torch.arange(B, device=S.device), lengths]
        if log_reward is None:
            log_reward = env.checked_log_reward(x)
        log_reward = log_reward.float()
        log_flow, log_Z = None, self.log_Z
        if self.flow_net is not None:
            fl = _scatter_rows(self.log_flow_at(Sv)[:, None], flat, B * T1).reshape(B, T1)
            log_flow = fl.scatter(1, lengths[:, None], log_reward[:, None])  # terminal column = log r
            log_Z = log_flow[:, 0]
        return Trajectories(
            states=S.float(), log_pf=log_pf, log_pb=log_pb, log_reward=log_reward, log_Z=log_Z, log_flow=log_flow,
            mask=mask,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------------ rollouts
    def rollout_forward(
        self,
        n: int,
        epsilon: float | None = None,
        generator: torch.Generator | None = None,
        temperature: float | None = None,
        *,
        exploration_std: float | None = None,
        reparam: bool = False,
    ) -> Trajectories:
        """Sample ``n`` forward trajectories from s_0.

        Args:
            n: batch size B.
            epsilon: ε of ε-uniform exploration (sampling only), e.g. the value of an ``exploration`` schedule.
            generator: source of all sampling randomness.
            temperature: sampling temperature of the forward logits (default: the model's).
            exploration_std: the continuous samplers' name for the exploration schedule's value, accepted as ε so that
                a training loop can drive either kind of sampler.
            reparam: must be ``False`` (discrete trajectories carry no reparameterised gradient).

        Returns:
            Trajectories (see the module docstring) with gradients for the policy, flow and backward networks.
        """
        if reparam:
            raise ValueError("discrete trajectories cannot be reparameterised (loss=pis needs a continuous target)")
        eps = _epsilon(epsilon, exploration_std)
        temp = self.temperature if temperature is None else _positive(temperature, "temperature")
        n = int(n)
        if self._use_tables(n):  # one pass of the networks over every state serves the sampling and the losses
            tables = self._tables()
            idx, A, L = self._sample_tabulated(n, tables["logits"], eps, temp, generator)
            return self._evaluate_tabulated(idx, A, L, None, tables)
        S, A, L = self._sample(self.env.s0.expand(n, -1), eps, temp, generator)
        return self.evaluate(S, A, L)

    def rollout_backward(
        self, x: Tensor, generator: torch.Generator | None = None, log_reward: Tensor | None = None
    ) -> Trajectories:
        """Sample backward trajectories from the terminal states ``x [B, ndim]`` to s_0 under P_B.

        Args:
            x: terminal states (long, or float holding whole numbers, as replay buffers store them).
            generator: source of the parent choices.
            log_reward: log r(x) to use instead of the target's (e.g. the teacher's own reward).

        Returns:
            Trajectories ending at ``x``, with log P_F and log P_B under autograd.

        Raises:
            ValueError: ``x`` has the wrong shape, or holds states that are not terminal states of the target.
        """
        x = self._check_terminal(x)
        S, A, L = self._sample_backward(x, generator)
        return self.evaluate(S, A, L, log_reward)

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float | None = None) -> Tensor:
        """``n`` terminal states ``[n, ndim]`` (long) of the trained policy, without log-probabilities (fast)."""
        temp = self.temperature if temperature is None else _positive(temperature, "temperature")
        n = int(n)
        rows = torch.arange(n, device=self.env.s0.device)
        if self._use_tables(n):
            with torch.no_grad():
                idx, _, L = self._sample_tabulated(n, self._tables()["logits"], 0.0, temp, generator)
            return self._dag()["states"][idx[rows, L]]
        S, _, L = self._sample(self.env.s0.expand(n, -1), 0.0, temp, generator)
        return S[rows, L]

    # ------------------------------------------------------------------------------- the simple sampling API
    def sample_states(
        self,
        s0: Tensor,
        return_log: bool = False,
        epsilon: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor | tuple[Tensor, SampleLog]:
        """Sample one trajectory per row of ``s0`` and return the terminal states (the "GFlowNet in PyTorch" API).

        Args:
            s0: ``[B, ndim]`` start states; every row must be the target's initial state (the origin of a grid).
            return_log: also return a :class:`SampleLog` of the trajectories (for :func:`trajectory_balance_loss`).
            epsilon: ε-uniform exploration while sampling.
            generator: source of the sampling randomness.

        Returns:
            ``x [B, ndim]`` (long), or ``(x, log)`` with ``return_log``.
        """
        s0 = as_states(s0)
        if s0.dim() != 2 or s0.shape[1] != self.dim or not bool((s0 == self.env.s0).all()):
            raise ValueError(
                "sample_states starts every trajectory at the target's initial state: pass s0 of shape "
                f"[B, {self.dim}] with every row equal to {tuple(self.env.s0.tolist())}"
            )
        if not return_log:
            with torch.no_grad():
                return self.rollout_forward(s0.shape[0], epsilon=epsilon, generator=generator).terminal_states.long()
        traj = self.rollout_forward(s0.shape[0], epsilon=epsilon, generator=generator)
        return traj.terminal_states.long(), SampleLog(traj)

    def _check_terminal(self, x: Tensor) -> Tensor:
        env = self.env
        if x.dim() != 2 or x.shape[1] != self.dim:
            shape = tuple(x.shape)
            raise ValueError(f"rollout_backward expects terminal states of shape [B, {self.dim}] (got {shape})")
        x = as_states(x.detach()).to(env.s0.device)
        bad = ~(env.contains(x) & env.terminal_mask(x))
        if bool(bad.any()):
            first = tuple(x[bad.nonzero()[0, 0]].tolist())
            raise ValueError(f"rollout_backward got {int(bad.sum())} states that are not terminal states of "
                             f"{env.name} (first: {first})")  # fmt: skip
        return x


@dataclass
class SampleLog:
    """What ``sample_states(s0, return_log=True)`` records, per trajectory (padded steps hold log-probability 0).

    Attributes:
        traj: the full :class:`Trajectories`.
    """

    traj: Trajectories

    @property
    def log_total_flow(self) -> Tensor:
        """log Z, the log of the total flow (a scalar, or ``[B]`` with a state flow)."""
        return self.traj.log_Z

    @property
    def rewards(self) -> Tensor:
        """``[B]`` r(x) of the terminal states."""
        return self.traj.log_reward.exp()

    @property
    def fwd_log_probs(self) -> Tensor:
        """``[B, T]`` log P_F of the actions taken."""
        return self.traj.log_pf

    @property
    def back_log_probs(self) -> Tensor:
        """``[B, T]`` log P_B of the same transitions."""
        return self.traj.log_pb


def trajectory_balance_loss(
    log_total_flow: Tensor, rewards: Tensor, fwd_log_probs: Tensor, back_log_probs: Tensor
) -> Tensor:
    """Mean squared trajectory-balance residual (log Z + Σ log P_F − Σ log P_B − log r)² over the batch.

    The arguments are the fields of a :class:`SampleLog`. This is twice the batch mean of
    :func:`sampler.losses.trajectory_balance`, the per-trajectory ½δ² the training loop uses.

    Args:
        log_total_flow: log Z, scalar or ``[B]``.
        rewards: ``[B]`` r(x) > 0.
        fwd_log_probs: ``[B, T]`` log P_F per step (0 on padding).
        back_log_probs: ``[B, T]`` log P_B per step (0 on padding).

    Returns:
        Scalar loss.
    """
    delta = log_total_flow + fwd_log_probs.sum(1) - back_log_probs.sum(1) - rewards.log()
    return delta.pow(2).mean()


def _categorical(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One draw per row of ``probs [B, A]`` by inverting the CDF at v = u·total, u ~ U[0, 1) (cheaper than
    ``torch.multinomial`` for small A). An action of probability 0 is never drawn (it would need
    cdf[a−1] ≤ v < cdf[a] = cdf[a−1]); in float64, v < total holds, so the draw stays below A."""
    cdf = probs.cumsum(-1, dtype=torch.float64)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=torch.float64)
    return (cdf <= u * cdf[:, -1:]).sum(-1)


def _scatter_rows(values: Tensor, rows: Tensor, n: int) -> Tensor:
    """``[n, ...]`` zeros with ``values`` at ``rows`` (differentiable in ``values``)."""
    out = values.new_zeros(n, *values.shape[1:])
    return out.index_put((rows,), values)


def _epsilon(epsilon, exploration_std) -> float:
    if epsilon is not None and exploration_std is not None:
        raise ValueError("pass epsilon or exploration_std (the same ε), not both")
    eps = epsilon if epsilon is not None else exploration_std
    if eps is None:
        return 0.0
    eps = float(eps)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"ε-uniform exploration needs 0 <= epsilon <= 1 (got {eps})")
    return eps


def _positive(value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{key} must be a finite number > 0 (got {value!r})")
    return float(value)

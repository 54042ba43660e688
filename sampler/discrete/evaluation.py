"""Evaluation of a discrete GFlowNet against its enumerated target: the model's exact terminal distribution by dynamic
programming over the DAG, its distances to π, empirical L1 from samples, modes found, and learned vs true log Z.

Two conventions of the empirical L1 are in use: the sum Σ_x |p̂(x) − π(x)| (torchgfn; = 2·total variation) and the
per-state mean of the same terms (the Adaptive Teachers grid code), which is the sum divided by the number of
terminal states. Both are reported, with N, the number of samples behind p̂.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sampler.discrete.env import DiscreteEnv, as_states
from sampler.energies.base import counting_energy_calls


@torch.no_grad()
def exact_terminal_distribution(gfn) -> Tensor:
    """The model's exact distribution over terminal states, with no sampling noise.

    The reach probability P(s) of every state solves P = e_{s0} + Mᵀ P, M the move transitions of P_F (temperature 1,
    no exploration); on a DAG whose longest path has ``max_steps`` transitions, ``max_steps`` sweeps of
    P ← e_{s0} + Mᵀ P are exact. A state's terminal mass is P(s)·P_F(stop | s), or P(s) for a forced-terminal state.

    Args:
        gfn: a :class:`~sampler.discrete.DiscreteGFN` of an enumerated target.

    Returns:
        ``[M]`` float64 probabilities over ``env.terminal_states()`` (summing to 1).
    """
    env: DiscreteEnv = gfn.env
    S = env.all_states().to(env.s0.device)  # [N, ndim], index order
    N, n_moves = S.shape[0], env.n_actions - 1
    forced = env.is_forced_terminal(S)  # [N]
    log_p = gfn.log_policy(S, torch.float64)  # [N, A]
    probs = log_p.exp().masked_fill(forced[:, None], 0.0)  # a forced-terminal state has no outgoing transitions
    move_p = probs[:, :n_moves]  # [N, A−1]
    src, a = (move_p > 0).nonzero(as_tuple=True)  # the DAG's edges with positive probability
    dst = env.state_index(env.step(S[src], a))
    w = move_p[src, a]
    start = torch.zeros(N, dtype=torch.float64, device=S.device)
    start[env.state_index(env.s0[None])] = 1.0
    P = start.clone()
    for _ in range(env.max_steps):
        P = start.index_add(0, dst, P[src] * w)
    term = torch.where(forced, P, P * probs[:, env.stop])  # [N]
    return term[env._enumeration()["index"].to(S.device)]


def kl_divergence(p: Tensor, q: Tensor) -> float:
    """KL(p ‖ q) = Σ p log(p/q) in nats (terms with p = 0 are 0; q is floored at 1e-300)."""
    p, q = p.double(), q.double()
    nz = p > 0
    return float((p[nz] * (p[nz].log() - q[nz].clamp(min=1e-300).log())).sum())


def jensen_shannon(p: Tensor, q: Tensor) -> float:
    """JSD(p, q) = ½ KL(p ‖ m) + ½ KL(q ‖ m), m = (p + q)/2, in nats (between 0 and log 2)."""
    m = 0.5 * (p.double() + q.double())
    return 0.5 * kl_divergence(p, m) + 0.5 * kl_divergence(q, m)


def empirical_distribution(env: DiscreteEnv, x: Tensor) -> Tensor:
    """``[M]`` float64 frequencies of the samples ``x [N, ndim]`` over ``env.terminal_states()``.

    Raises:
        ValueError: a sample is not a terminal state of ``env``.
    """
    e = env._enumeration()
    lookup = torch.full((env.n_states,), -1, dtype=torch.long)
    lookup[e["index"]] = torch.arange(e["index"].shape[0])
    pos = lookup[env.state_index(as_states(x).to(env.s0.device)).cpu()]
    if bool((pos < 0).any()):
        raise ValueError(f"{int((pos < 0).sum())} samples are not terminal states of {env.name}")
    counts = torch.bincount(pos, minlength=e["index"].shape[0]).double()
    return counts / max(x.shape[0], 1)


class ModeTracker:
    """Distinct modes (maximal-reward terminal states) found over training, and trajectories sampled so far.

    Call :meth:`update` with the terminal states of every training batch of trajectories (forward or not: whatever
    the run counts as sampled). State is tensors only (:meth:`state_dict`), for checkpoints.

    Args:
        env: the target (``is_mode``, ``state_index`` or plain coordinates, ``n_modes``).
    """

    def __init__(self, env: DiscreteEnv):
        self.env = env
        self.found: set[tuple[int, ...]] = set()
        self.n_trajectories = 0
        self.history: list[tuple[int, int]] = []  # (n_trajectories, modes found) after each update

    @torch.no_grad()
    def update(self, x: Tensor) -> int:
        """Record the terminal states ``x [B, ndim]``; returns the number of modes found so far."""
        x = as_states(x.detach())
        self.n_trajectories += x.shape[0]
        hits = x[self.env.is_mode(x)]
        if hits.shape[0]:
            self.found.update(map(tuple, torch.unique(hits, dim=0).tolist()))
        self.history.append((self.n_trajectories, len(self.found)))
        return len(self.found)

    def observe(self, traj) -> int:
        """:meth:`update` with the terminal states of a training batch (a recipe's observer)."""
        return self.update(traj.terminal_states)

    def metrics(self) -> dict[str, float]:
        """``{"modes_found_train", "n_trajectories"}`` (modes ever sampled in training; trajectories so far)."""
        return {"modes_found_train": float(len(self.found)), "n_trajectories": float(self.n_trajectories)}

    def state_dict(self) -> dict[str, Tensor]:
        found = torch.tensor(sorted(self.found), dtype=torch.long).reshape(-1, self.env.ndim)
        return {
            "found": found,
            "n_trajectories": torch.tensor(self.n_trajectories),
            "history": torch.tensor(self.history, dtype=torch.long).reshape(-1, 2),
        }

    def load_state_dict(self, state: dict) -> None:
        self.found = set(map(tuple, state["found"].tolist()))
        self.n_trajectories = int(state["n_trajectories"])
        self.history = [tuple(r) for r in state["history"].tolist()]


@torch.no_grad()
def evaluate_discrete(
    gfn,
    env: DiscreteEnv | None = None,
    n_samples: int = 10_000,
    generator: torch.Generator | None = None,
    return_samples: bool = False,
) -> dict[str, float] | tuple[dict[str, float], Tensor]:
    """Evaluate a discrete GFlowNet (no exploration, temperature 1; the target's calls are not counted).

    Args:
        gfn: a :class:`~sampler.discrete.DiscreteGFN`.
        env: its target (default ``gfn.env``).
        n_samples: N, fresh samples behind the empirical L1 and the modes found.
        generator: the sampling randomness.
        return_samples: also return the N samples ``[N, ndim]`` (long) behind the empirical metrics.

    Returns:
        Flat floats: ``l1_exact kl_exact jsd_exact`` (model's exact distribution p against π: Σ|p − π|, KL(π ‖ p),
        JSD), ``l1_empirical`` (Σ|p̂ − π|) and ``l1_empirical_mean`` (the per-state mean), ``n_empirical`` (N),
        ``modes_found`` (distinct modes in the sample), ``modes_total``, ``log_Z_learned`` and ``log_Z`` (true).
        Keys that need the enumeration are absent when the target is not enumerated, ``modes_total`` when the
        target does not know its number of modes.
    """
    env = env if env is not None else gfn.env
    out: dict[str, float] = {}
    with counting_energy_calls(env, on=False):
        x = gfn.sample(int(n_samples), generator=generator)
        out["n_empirical"] = float(x.shape[0])
        out["modes_found"] = float(torch.unique(x[env.is_mode(x)], dim=0).shape[0])
        n_modes = env.n_modes
        if n_modes is not None:
            out["modes_total"] = float(n_modes)
        out["log_Z_learned"] = float(gfn.log_Z_learned.detach())
        if env.exact:
            pi = env.target_probs()
            p = exact_terminal_distribution(gfn).cpu()
            p_hat = empirical_distribution(env, x)
            out["l1_exact"] = float((p - pi).abs().sum())
            out["kl_exact"] = kl_divergence(pi, p)
            out["jsd_exact"] = jensen_shannon(pi, p)
            l1 = (p_hat - pi).abs()
            out["l1_empirical"] = float(l1.sum())
            out["l1_empirical_mean"] = float(l1.mean())
            out["log_Z"] = float(env.log_Z)
    metrics = {k: out[k] for k in _KEY_ORDER if k in out}
    return (metrics, x) if return_samples else metrics


_KEY_ORDER = (
    "l1_exact", "kl_exact", "jsd_exact", "l1_empirical", "l1_empirical_mean", "n_empirical", "modes_found",
    "modes_total", "log_Z_learned", "log_Z",
)  # fmt: skip

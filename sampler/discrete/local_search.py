"""Back-and-forth local search for discrete GFlowNets (Kim et al. 2024, "Local search GFlowNets",
https://arxiv.org/abs/2310.02710; used on the deceptive grid by Kim et al. 2025).

From a terminal state x, go back k steps along a parent chain drawn from P_B, rebuild the rest of a trajectory with
P_F from the state reached, and keep the new terminal state x' if r(x') ≥ r(x). With k = ⌊back_ratio · n(x)⌋, n(x) the
number of moves from s_0 to x, the search stays near x early and far from it for long trajectories.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sampler.discrete.env import as_states
from sampler.local_search import LocalSearch


@torch.no_grad()
def back_and_forth(
    gfn,
    x: Tensor,
    back_ratio: float = 0.5,
    iterations: int = 1,
    generator: torch.Generator | None = None,
    epsilon: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Refine terminal states by ``iterations`` rounds of back-and-forth search.

    Args:
        gfn: a :class:`~sampler.discrete.DiscreteGFN` (its P_B goes back, its P_F comes forward).
        x: ``[B, ndim]`` terminal states.
        back_ratio: fraction of each trajectory's moves to undo (0 < back_ratio ≤ 1).
        iterations: search rounds; each starts from the states kept by the previous one.
        generator: source of the randomness.
        epsilon: ε-uniform exploration of the forward rebuild (0: the policy itself).

    Returns:
        ``(x [B, ndim] long, log r(x) [B], accepted [B])``: the kept states, their log-rewards, and whether each row
        moved to another state in some round.
    """
    if not 0.0 < back_ratio <= 1.0:
        raise ValueError(f"local_search.back_ratio must be in (0, 1] (got {back_ratio})")
    if iterations < 1:
        raise ValueError(f"local_search.iterations must be >= 1 (got {iterations})")
    env = gfn.env
    x = gfn._check_terminal(x)
    B = x.shape[0]
    log_r = env.checked_log_reward(x)
    accepted = torch.zeros(B, dtype=torch.bool, device=x.device)
    rows = torch.arange(B, device=x.device)
    for _ in range(iterations):
        S, A, L = gfn._sample_backward(x, generator)  # forward-ordered parent chains s_0 … x
        n_moves = L - (A[rows, L - 1] == env.stop).long()  # every trajectory has L ≥ 1 transitions
        k = (back_ratio * n_moves.double()).floor().long()
        mid = S[rows, n_moves - k]  # the state k moves before x
        S2, _, L2 = gfn._sample(mid, float(epsilon), 1.0, generator)
        x_new = S2[rows, L2]
        log_r_new = env.checked_log_reward(x_new)
        keep = (log_r_new >= log_r) & (k > 0)  # k = 0: nothing to undo, no proposal
        accepted |= keep & (x_new != x).any(-1)
        x = torch.where(keep[:, None], x_new, x)
        log_r = torch.where(keep, log_r_new, log_r)
    return x, log_r, accepted


class BackAndForthSearch(LocalSearch):
    """Back-and-forth search as a training run's local search: :meth:`run` refines replay samples and returns them
    for the local-search buffer (see :class:`sampler.local_search.LocalSearch`).

    The search needs the GFN whose P_B and P_F it follows: :meth:`attach` it once after building both.

    Args:
        back_ratio: fraction of each trajectory's moves to undo.
        iterations: search rounds per call (the Adaptive Teachers grid code: 4).
        epsilon: ε-uniform exploration of the forward rebuild.
        every, batch_size, capacity, k: when the run calls it and the buffer it fills (see ``LocalSearch``).
    """

    def __init__(
        self,
        back_ratio: float = 0.5,
        iterations: int = 4,
        epsilon: float = 0.0,
        every: int = 1,
        batch_size: int | None = None,
        capacity: int = 100_000,
        k: float = 0.01,
    ):
        super().__init__(every=every, batch_size=batch_size, capacity=capacity, k=k)
        if not 0.0 < back_ratio <= 1.0:
            raise ValueError(f"local_search.back_ratio must be in (0, 1] (got {back_ratio})")
        if not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"local_search.iterations must be a whole number >= 1 (got {iterations!r})")
        self.back_ratio, self.iterations, self.epsilon = float(back_ratio), int(iterations), float(epsilon)
        self.gfn = None
        self.last_accept_rate = 0.0

    def attach(self, gfn) -> BackAndForthSearch:
        """Use ``gfn``'s policies; returns ``self``."""
        self.gfn = gfn
        return self

    def run(self, x: Tensor, energy, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Refine ``x [B, ndim]``; returns (states ``[B, ndim]`` as float, their log-rewards ``[B]``)."""
        if self.gfn is None:
            raise RuntimeError("BackAndForthSearch needs its GFN: call search.attach(gfn) first")
        x_new, log_r, accepted = back_and_forth(
            self.gfn, as_states(x), self.back_ratio, self.iterations, generator, self.epsilon
        )
        self.last_accept_rate = float(accepted.float().mean()) if x.shape[0] else 0.0
        return x_new.float(), log_r.float()

    def stats(self) -> dict[str, float]:
        return {"accept_rate": self.last_accept_rate}

"""Local search (config group ``local_search``, docs/spec.md §6): :class:`LocalSearch`, what a training run needs of
one, and :class:`MALA`, the parallel MALA of Sendera et al. 2024, App. E (https://arxiv.org/abs/2402.05098).

A batch of starting points (drawn from the replay buffer) is moved by B independent Metropolis-adjusted Langevin
chains; the proposals accepted after burn-in, with their log-rewards, are what the training loop stores in the
local-search buffer (a rank buffer of ``capacity`` entries and offset ``k``). A new local search is a subclass of
:class:`LocalSearch` implementing ``run`` and one YAML file naming it (``_target_: my.module.MySearch``).

MALA's step size η adapts ×1.01 / ×0.99 after every iteration toward the acceptance rate 0.574 and carries over
from one call to the next (and through checkpoints).

Differences from the public reference (GFNOrg/gfn-diffusion ``energy_sampling/langevin.py``), following docs/spec.md:
η adapts on each iteration's own acceptance rate (the reference uses a stale 5-iteration window) and persists
across calls (the reference restarts from η0 every call); samples are kept from iteration ``burn_in`` on
(0-based; the reference starts one later).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sampler.energies.base import check_finite


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class LocalSearch:
    """A local search over replay samples, as a training run drives it (:class:`sampler.recipe.Recipe`).

    Every ``every`` training steps (and whenever its buffer is empty) the run draws ``batch_size`` starting points
    from the replay buffer, calls :meth:`run` and stores what it returns in the local-search buffer, a
    :class:`sampler.buffers.RankBuffer` of ``capacity`` entries with offset ``k``; backward steps with
    ``backward_source="local_search"`` draw from that buffer.

    Args:
        every: run the search every this many training steps.
        batch_size: number of starting points per call (``None``: the training batch size).
        capacity: capacity of the local-search buffer.
        k: rank offset of the local-search buffer (> 0).
    """

    def __init__(self, every: int = 100, batch_size: int | None = None, capacity: int = 600_000, k: float = 0.01):
        if not _whole(every) or every < 1:
            raise ValueError(f"local_search.every must be a positive number of steps (got {every})")
        if batch_size is not None and (not _whole(batch_size) or batch_size < 1):
            raise ValueError(f"local_search.batch_size must be a positive integer or null (got {batch_size})")
        if not _whole(capacity) or capacity < 1:
            raise ValueError(f"local_search.capacity must be a positive integer (got {capacity!r})")
        if not (isinstance(k, (int, float)) and 0 < k < math.inf):
            raise ValueError(f"local_search.k must be a positive finite number (got {k!r})")
        self.every = int(every)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.capacity, self.k = int(capacity), float(k)

    def run(self, x: Tensor, energy, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Search from the starting points ``x`` ``[B, d]``; returns (states ``[M, d]``, their log-rewards ``[M]``)."""
        raise NotImplementedError

    def stats(self) -> dict[str, float]:
        """Numbers to log (as ``ls_<name>``)."""
        return {}

    def state_dict(self) -> dict[str, Tensor]:
        """Adapted state for the checkpoint, as tensors."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""


class MALA(LocalSearch):
    """Metropolis-adjusted Langevin local search with an adaptive step size.

    Proposal x' = x + η ∇log r(x) + √(2η) ξ, ξ ~ N(0, I), accepted with probability
    min(1, r(x') q(x | x') / (r(x) q(x' | x))), log q(b | a) = −‖b − a − η ∇log r(a)‖² / (4η).

    Args:
        n_steps: MALA iterations K per call.
        burn_in: iterations whose proposals are not returned (0 ≤ burn_in < n_steps).
        step_size: initial η (> 0).
        target_accept: acceptance rate η is steered toward (0.574 is optimal for MALA).
        adapt: multiply η by 1.01 after an iteration whose batch acceptance rate exceeds ``target_accept``, by 0.99
            otherwise; ``False`` keeps η fixed.
        every, batch_size, capacity, k: when the training loop runs it, from how many buffer draws (the number of
            chains), and the local-search buffer it fills (see :class:`LocalSearch`).

    Attributes:
        step_size: the current η.
        last_accept_rate: mean acceptance rate over the returned (post-burn-in) iterations of the last ``run``.
        last_state: final chain positions ``[B, d]`` of the last ``run`` (the MH chain, invariant for r).
    """

    def __init__(
        self,
        n_steps: int = 200,
        burn_in: int = 100,
        step_size: float = 0.1,
        target_accept: float = 0.574,
        adapt: bool = True,
        every: int = 100,
        batch_size: int | None = None,
        capacity: int = 600_000,
        k: float = 0.01,
    ):
        if n_steps < 1:
            raise ValueError(f"local_search.n_steps must be a positive integer (got {n_steps})")
        if not 0 <= burn_in < n_steps:
            raise ValueError(f"local_search.burn_in must be in [0, n_steps={n_steps}) (got {burn_in})")
        if not (step_size > 0 and math.isfinite(step_size)):
            raise ValueError(f"local_search.step_size must be a positive finite number (got {step_size})")
        if not 0 < target_accept < 1:
            raise ValueError(f"local_search.target_accept must be in (0, 1) (got {target_accept})")
        super().__init__(every, batch_size, capacity, k)
        self.n_steps, self.burn_in = int(n_steps), int(burn_in)
        self.step_size = float(step_size)
        self.target_accept, self.adapt = float(target_accept), bool(adapt)
        self.last_accept_rate = math.nan
        self.last_state: Tensor | None = None

    @torch.no_grad()
    def run(self, x: Tensor, energy, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Run ``n_steps`` parallel MALA iterations from ``x``.

        Args:
            x: starting points, shape ``[B, d]``, on the energy's device; their log-rewards must be finite.
            energy: any object with ``log_reward_and_grad(x) -> ([B], [B, d])`` (see
                :class:`sampler.energies.base.Energy`).
            generator: the only source of randomness (on ``x``'s device); ``None`` uses the global RNG.

        Returns:
            (states ``[M, d]``, log-rewards ``[M]``): every proposal accepted at iterations ``burn_in, …,
            n_steps − 1``, ordered by iteration then chain. Proposals with a non-finite log-reward are rejected.
        """
        B, d = x.shape
        K = self.n_steps - self.burn_in
        x = x.detach().clone()
        log_r, grad = energy.log_reward_and_grad(x)  # [B], [B, d]
        check_finite(log_r, "the local-search starting points")
        eta = torch.tensor(self.step_size, dtype=torch.float64, device=x.device)  # stays on device: no sync
        up, down = (torch.tensor(f, dtype=torch.float64, device=x.device) for f in (1.01, 0.99))
        kept_x = x.new_empty(K, B, d)
        kept_log_r = log_r.new_empty(K, B)
        kept = torch.zeros(K, B, dtype=torch.bool, device=x.device)
        for i in range(self.n_steps):
            noise = torch.randn(B, d, generator=generator, device=x.device, dtype=x.dtype)
            drift = x + eta * grad
            prop = drift + torch.sqrt(2 * eta) * noise
            log_r_prop, grad_prop = energy.log_reward_and_grad(prop)
            log_q_fwd = -0.5 * noise.pow(2).sum(-1)  # −‖prop − x − η∇log r(x)‖² / (4η), as 2η‖ξ‖² / (4η)
            log_q_bwd = -(x - prop - eta * grad_prop).pow(2).sum(-1) / (4 * eta)
            log_accept = log_r_prop - log_r + log_q_bwd - log_q_fwd  # [B]; NaN/−inf compare False below
            u = torch.rand(B, generator=generator, device=x.device, dtype=x.dtype)
            accept = (torch.log(u) < log_accept) & torch.isfinite(log_r_prop)  # [B]
            x = torch.where(accept[:, None], prop, x)
            log_r = torch.where(accept, log_r_prop, log_r)
            grad = torch.where(accept[:, None], grad_prop, grad)
            if self.adapt:
                rate = accept.double().mean()
                eta = eta * torch.where(rate > self.target_accept, up, down)
            if i >= self.burn_in:
                j = i - self.burn_in
                kept_x[j], kept_log_r[j], kept[j] = prop, log_r_prop, accept
        self.step_size = float(eta)
        self.last_accept_rate = float(kept.double().mean())
        self.last_state = x
        return kept_x[kept], kept_log_r[kept]

    def stats(self) -> dict[str, float]:
        """``accept_rate`` (of the last run, post-burn-in) and the current ``step_size``."""
        return {"accept_rate": self.last_accept_rate, "step_size": self.step_size}

    def state_dict(self) -> dict[str, Tensor]:
        """The adapted η (and last acceptance rate) as tensors, for the checkpoint."""
        return {
            "step_size": torch.tensor(self.step_size, dtype=torch.float64),
            "last_accept_rate": torch.tensor(self.last_accept_rate, dtype=torch.float64),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore η (and the last acceptance rate) from :meth:`state_dict`."""
        self.step_size = float(state["step_size"])
        self.last_accept_rate = float(state.get("last_accept_rate", math.nan))

    def __repr__(self) -> str:
        return (
            f"MALA(n_steps={self.n_steps}, burn_in={self.burn_in}, step_size={self.step_size:.4g},"
            f" target_accept={self.target_accept}, adapt={self.adapt}, every={self.every})"
        )

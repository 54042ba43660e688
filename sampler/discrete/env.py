"""The protocol of a discrete target: a DAG of integer states built from s_0, and a reward on its terminal states.

A discrete GFlowNet (:class:`sampler.discrete.DiscreteGFN`) needs of its target only the methods of
:class:`DiscreteEnv`, all batched over a leading dimension:

* **states** are fixed-length integer vectors ``[..., ndim]`` (``torch.long``; float tensors holding whole numbers are
  accepted wherever a state goes in, because replay buffers store float states). ``s0`` is the initial state.
* **actions** are indices ``0 .. n_actions - 1``; the last one, ``stop``, ends the trajectory at the current state.
  Every other action is a *move* with a unique inverse: ``parent(step(s, a), a) == s``, so a backward action is the
  move that is undone (``0 .. n_actions - 2``).
* **masks**: ``forward_mask(s) -> [..., n_actions]`` the valid actions at a non-terminal state; ``backward_mask(s) ->
  [..., n_actions - 1]`` the moves that lead *into* ``s`` from a valid parent (all ``False`` at ``s0``).
* **termination**: a trajectory ends with ``stop``, or on arriving at a state with ``is_forced_terminal(s)``
  (the deceptive grid's edges); ``max_steps`` bounds the number of transitions, stop included.
* **encoding**: ``encode(s) -> [..., obs_dim]`` float features for the policy network; ``khot_index(s)`` may instead
  return the positions of the ones of a K-hot encoding (``[..., K]`` long), which the network reads as an embedding
  sum — the same function as a linear layer on ``encode(s)``, without building the one-hot matrix.
* **reward**: ``log_reward(x) -> [...]`` on terminal states; rewards must be positive and finite.
* **enumeration** (optional; needed for the exact metrics, exact samples and the true log Z): ``n_states``,
  ``all_states() -> [n_states, ndim]`` with ``state_index(all_states()) == arange(n_states)``, and
  ``terminal_mask(states)``, the states that can end a trajectory.

:class:`GridEnv` implements all of it for the hypergrid family ``{0..H-1}^ndim`` (moves +1 on one coordinate); a new
reward on that grid is a subclass that implements ``log_reward`` (see docs/discrete.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from sampler.energies.base import Energy

#: Default bound on the number of states enumerated for the exact metrics (the exact model distribution evaluates
#: the policy on every state).
MAX_STATES = 250_000


def as_states(x: Tensor) -> Tensor:
    """Integer states ``long`` from ``x`` (float tensors holding whole numbers, as replay buffers store them)."""
    return x if x.dtype == torch.long else x.round().long()


class DiscreteEnv(Energy):
    """Base class of discrete targets (see the module docstring for the protocol).

    Subclasses set ``ndim``, ``n_actions``, ``obs_dim``, ``max_steps`` and the ``s0`` buffer, and implement the
    methods that raise ``NotImplementedError`` here. The enumeration helpers below (``terminal_states``,
    ``target_probs``, ``log_Z``, ``sample``, mode bookkeeping) are generic.

    Attributes:
        discrete: always ``True`` (how the training module tells discrete targets from continuous ones).
        exact: whether the state space is enumerated (exact metrics, exact samples, true log Z).
        n_states: number of states when enumerable, else ``None``.
    """

    discrete = True
    #: whether ``is_forced_terminal`` can be true (``False`` lets the sampler skip it)
    forced_termination = False
    ndim: int
    n_actions: int
    obs_dim: int
    max_steps: int
    exact: bool = False
    n_states: int | None = None

    # --- the DAG -------------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """State dimension (the replay buffers' ``dim``)."""
        return self.ndim

    @property
    def stop(self) -> int:
        """Index of the stop action (the last)."""
        return self.n_actions - 1

    def forward_mask(self, s: Tensor) -> Tensor:
        """``[..., n_actions]`` bool: valid actions at ``s``."""
        raise NotImplementedError

    def step(self, s: Tensor, a: Tensor) -> Tensor:
        """The state after action ``a`` (``stop`` leaves ``s`` unchanged)."""
        raise NotImplementedError

    def is_forced_terminal(self, s: Tensor) -> Tensor:
        """``[...]`` bool: arriving at ``s`` ends the trajectory without a stop action (default: never)."""
        return torch.zeros(s.shape[:-1], dtype=torch.bool, device=s.device)

    def backward_mask(self, s: Tensor) -> Tensor:
        """``[..., n_actions - 1]`` bool: moves ``a`` such that ``parent(s, a)`` is a valid non-terminal parent."""
        raise NotImplementedError

    def parent(self, s: Tensor, a: Tensor) -> Tensor:
        """The state that move ``a`` leads from to ``s``."""
        raise NotImplementedError

    def action_between(self, s: Tensor, s_next: Tensor) -> Tensor:
        """``[...]`` long: the action from ``s`` to ``s_next`` (``stop`` when they are equal)."""
        raise NotImplementedError

    def encode(self, s: Tensor) -> Tensor:
        """``[..., obs_dim]`` float features of ``s``."""
        raise NotImplementedError

    def khot_index(self, s: Tensor) -> Tensor | None:
        """Positions ``[..., K]`` of the ones of a K-hot ``encode(s)``, or ``None`` (dense features)."""
        return None

    # --- enumeration (optional) ----------------------------------------------------------------------------
    def all_states(self) -> Tensor:
        """``[n_states, ndim]`` every state, in the order of :meth:`state_index`."""
        raise NotImplementedError(f"{self.name} does not enumerate its states")

    def state_index(self, s: Tensor) -> Tensor:
        """``[...]`` long index of ``s`` in :meth:`all_states`."""
        raise NotImplementedError(f"{self.name} does not enumerate its states")

    def terminal_mask(self, states: Tensor) -> Tensor:
        """``[...]`` bool: states that can end a trajectory (default: every state)."""
        return torch.ones(states.shape[:-1], dtype=torch.bool, device=states.device)

    def contains(self, s: Tensor) -> Tensor:
        """``[...]`` bool: ``s`` is a state of this DAG (default: every integer vector)."""
        return torch.ones(s.shape[:-1], dtype=torch.bool, device=s.device)

    # --- reward checks and the exact target -----------------------------------------------------------------
    def checked_log_reward(self, x: Tensor) -> Tensor:
        """``log_reward(x)`` (in the dtype the reward returns), with one clear error when a reward is not positive and
        finite.

        Raises:
            ValueError: a reward ≤ 0 or NaN (log-reward −inf or NaN), naming one offending state.
        """
        lr = self.log_reward(x)
        bad = ~torch.isfinite(lr)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0]) if bad.dim() else 0
            state = tuple(int(v) for v in as_states(x.reshape(-1, x.shape[-1])[i]))
            raise ValueError(
                f"{self.name}.log_reward returned {int(bad.sum())} non-finite values of {bad.numel()} (first at state "
                f"{state}: {float(lr.reshape(-1)[i])}); rewards must be positive and finite"
            )
        return lr

    def _enumeration(self) -> dict:
        """Terminal states, their log-rewards (float64) and indices, computed once (on CPU)."""
        cache = self.__dict__.get("_enum_cache")
        if cache is not None:
            return cache
        if not self.exact:
            raise ValueError(f"{self.name} is not enumerated (exact=False): the exact target is not available")
        states = self.all_states().cpu()
        term = self.terminal_mask(states)
        x = states[term]
        with torch.no_grad():
            log_r = self.checked_log_reward(x).double()
        log_Z = torch.logsumexp(log_r, 0)
        cache = {
            "states": x,
            "index": self.state_index(x),
            "log_reward": log_r,
            "log_Z": float(log_Z),
            "probs": (log_r - log_Z).exp(),
            "max_log_reward": float(log_r.max()),
        }
        object.__setattr__(self, "_enum_cache", cache)
        return cache

    def validate(self) -> None:
        """Enumerate now when ``exact`` (so that a bad reward fails at construction, before anything is written)."""
        if self.exact:
            self._enumeration()

    def terminal_states(self) -> Tensor:
        """``[M, ndim]`` every terminal state (enumerated targets)."""
        return self._enumeration()["states"]

    def target_probs(self) -> Tensor:
        """``[M]`` float64 π(x) = r(x)/Z over :meth:`terminal_states`."""
        return self._enumeration()["probs"]

    @property
    def log_Z(self) -> float | None:
        """The true log-partition function log Σ_x r(x) (enumerated targets), else ``None``."""
        return self._enumeration()["log_Z"] if self.exact else None

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact samples ``[n, ndim]`` (float coordinates, as the replay buffers store states) from π.

        Raises:
            NotImplementedError: the target is not enumerated.
        """
        if not self.exact:
            raise NotImplementedError(f"{self.name} has no exact sampler (exact=False)")
        e = self._enumeration()
        idx = torch.multinomial(e["probs"].to(self.device), n, replacement=True, generator=generator)
        return e["states"].to(self.device)[idx].float()

    @property
    def has_sampler(self) -> bool:
        return bool(self.exact)

    # --- modes ---------------------------------------------------------------------------------------------
    def is_mode(self, x: Tensor) -> Tensor:
        """``[...]`` bool: ``x`` has the maximal reward (default: within 1e-9 relative of the enumerated maximum)."""
        top = self._enumeration()["max_log_reward"]
        lr = self.log_reward(x).double()
        return lr >= top - 1e-9 * max(1.0, abs(top))

    @property
    def n_modes(self) -> int | None:
        """Number of distinct maximal-reward terminal states, when known."""
        if not self.exact:
            return None
        e = self._enumeration()
        return int(self.is_mode(e["states"]).sum())


class GridEnv(DiscreteEnv):
    """The hypergrid DAG ``{0..H-1}^ndim`` from the origin: a move adds 1 to one coordinate (masked at H-1), ``stop``
    ends the trajectory anywhere; the policy reads the K-hot encoding (one one-hot block of H per coordinate).

    Subclass it and implement ``log_reward`` for a reward of your own on this grid.

    Args:
        ndim: number of coordinates (≥ 1).
        height: H, values per coordinate (≥ 2).
        exact: enumerate the H^ndim states for the exact metrics, exact samples and the true log Z.
        max_states: refuse to enumerate more states than this (the exact metrics would be too slow).

    Raises:
        ValueError: ndim/height out of range, or too many states with ``exact``.
    """

    def __init__(self, ndim: int, height: int, exact: bool = True, max_states: int = MAX_STATES):
        super().__init__()
        _whole_at_least(ndim, 1, "energy.ndim")
        _whole_at_least(height, 2, "energy.height")
        _whole_at_least(max_states, 1, "energy.max_states")
        self.ndim, self.height = int(ndim), int(height)
        self.n_actions = self.ndim + 1
        self.obs_dim = self.ndim * self.height
        self.max_steps = self.ndim * (self.height - 1) + 1
        n_states = self.height**self.ndim
        self.exact = bool(exact)
        if self.exact and n_states > max_states:
            raise ValueError(
                f"{type(self).__name__} ndim={self.ndim} height={self.height} has {n_states:,} states, more than "
                f"energy.max_states={max_states:,} for the exact metrics; set energy.exact=false to switch them off "
                "(or raise energy.max_states)"
            )
        self.n_states = n_states if self.exact else None
        self.register_buffer("s0", torch.zeros(self.ndim, dtype=torch.long), persistent=False)
        # step(s, a) = s + moves[a]: one row per move, a zero row for stop
        moves = torch.cat([torch.eye(self.ndim, dtype=torch.long), torch.zeros(1, self.ndim, dtype=torch.long)])
        self.register_buffer("moves", moves, persistent=False)
        self.register_buffer("offsets", torch.arange(self.ndim) * self.height, persistent=False)
        self.register_buffer("radix", self.height ** torch.arange(self.ndim), persistent=False)

    def forward_mask(self, s: Tensor) -> Tensor:
        return F.pad(as_states(s) < self.height - 1, (0, 1), value=True)  # moves below H−1, then stop

    def step(self, s: Tensor, a: Tensor) -> Tensor:
        return as_states(s) + self.moves[a]

    def backward_mask(self, s: Tensor) -> Tensor:
        return as_states(s) > 0

    def parent(self, s: Tensor, a: Tensor) -> Tensor:
        return as_states(s) - self.moves[a]

    def action_between(self, s: Tensor, s_next: Tensor) -> Tensor:
        diff = as_states(s_next) - as_states(s)  # one coordinate +1, or all 0 for stop
        moved = diff.any(-1)
        return torch.where(moved, diff.argmax(-1), torch.full_like(moved, self.stop, dtype=torch.long))

    def encode(self, s: Tensor) -> Tensor:
        s = as_states(s)
        out = torch.zeros(*s.shape[:-1], self.obs_dim, device=s.device)
        return out.scatter_(-1, s + self.offsets, 1.0)

    def khot_index(self, s: Tensor) -> Tensor:
        return as_states(s) + self.offsets

    def contains(self, s: Tensor) -> Tensor:
        s = as_states(s)
        return ((s >= 0) & (s < self.height)).all(-1)

    def all_states(self) -> Tensor:
        i = torch.arange(self.height**self.ndim, device=self.radix.device)
        return (i[:, None] // self.radix) % self.height

    def state_index(self, s: Tensor) -> Tensor:
        return (as_states(s) * self.radix).sum(-1)

    def _coordinate_distance(self, x: Tensor) -> Tensor:
        """``a = |2x − (H−1)|`` (integer): the distance from the centre in units of ``1/(2(H−1))``, so that the
        rewards' band tests are exact integer comparisons."""
        return (2 * as_states(x) - (self.height - 1)).abs()


def _whole_at_least(value, low: int, key: str) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) or (isinstance(value, float) and value.is_integer())
    if not ok or value < low:
        raise ValueError(f"{key} must be a whole number >= {low} (got {value!r})")


def positive_finite(value, key: str) -> float:
    """``value`` as a float, or one line naming ``key`` when it is not a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{key} must be a finite number > 0 (got {value!r})")
    return float(value)


def non_negative_finite(value, key: str) -> float:
    """``value`` as a float, or one line naming ``key`` when it is not a finite number ≥ 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{key} must be a finite number >= 0 (got {value!r})")
    return float(value)

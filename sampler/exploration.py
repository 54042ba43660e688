"""Exploration schedules (config group ``exploration``, docs/spec.md §4).

A schedule maps the training step to ε, the std of extra per-step displacement noise added in quadrature to the
forward policy's noise while *sampling* training trajectories (log P_F is still evaluated under the unexplored
policy). Schedules are pure functions of the step, so they hold no state and need nothing in a checkpoint.
Their numbers are checked when they are built: a ValueError of one line names the key (``exploration.start`` ...).
"""

from __future__ import annotations

import math


def _real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _start(start) -> float:
    """``exploration.start`` as a float: a finite ε ≥ 0 (NaN would compare False everywhere and switch ε off)."""
    if not _real(start) or start < 0:
        raise ValueError(f"exploration.start must be a finite number >= 0 (got {start!r})")
    return float(start)


def _horizon(horizon) -> int:
    """``exploration.horizon`` as an int: a positive whole number of steps."""
    if not _real(horizon) or horizon <= 0 or horizon != int(horizon):
        raise ValueError(f"exploration.horizon must be a positive whole number of steps (got {horizon!r})")
    return int(horizon)


class ExplorationSchedule:
    """ε(step) = 0: on-policy sampling (``exploration=none``).

    ``start`` and ``horizon`` are accepted and ignored, so that ``exploration=none`` also switches off the schedule
    of a preset that configured them (``experiment=tb_expl_ls exploration=none``).
    """

    def __init__(self, start: float | None = None, horizon: int | None = None):
        pass

    def __call__(self, step: int) -> float | None:
        return None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class _Decay(ExplorationSchedule):
    def __init__(self, start: float = 0.2, horizon: int = 12500):
        self.start, self.horizon = _start(start), _horizon(horizon)

    def __call__(self, step: int) -> float | None:
        eps = self.start * self._factor(min(step, self.horizon) / self.horizon) if step < self.horizon else 0.0
        return eps if eps > 0 else None

    def _factor(self, u: float) -> float:
        raise NotImplementedError


class Constant(ExplorationSchedule):
    """ε(step) = ``start`` for every step (``horizon`` is accepted and ignored, so that ``exploration=constant`` can
    replace the decaying schedule of a preset that sets one)."""

    def __init__(self, start: float = 0.2, horizon: int | None = None):
        self.start = _start(start)

    def __call__(self, step: int) -> float | None:
        return self.start if self.start > 0 else None


class LinearDecay(_Decay):
    """ε(step) = start · max(0, 1 − step/horizon) — Sendera et al.'s schedule (the published code: horizon 5000)."""

    def _factor(self, u: float) -> float:
        return 1.0 - u


class CosineDecay(_Decay):
    """ε(step) = start · ½(1 + cos(π·step/horizon)) until ``horizon``, then 0."""

    def _factor(self, u: float) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * u))


class ExponentialDecay(_Decay):
    """ε(step) = start · exp(−rate·step/horizon) until ``horizon``, then 0 (rate 5: ε falls to 0.7 % of start)."""

    def __init__(self, start: float = 0.2, horizon: int = 12500, rate: float = 5.0):
        super().__init__(start, horizon)
        if not _real(rate) or rate <= 0:
            raise ValueError(f"exploration.rate must be a finite number > 0 (got {rate!r})")
        self.rate = float(rate)

    def _factor(self, u: float) -> float:
        return math.exp(-self.rate * u)


SCHEDULES = {
    "none": ExplorationSchedule,
    "constant": Constant,
    "linear": LinearDecay,
    "cosine": CosineDecay,
    "exponential": ExponentialDecay,
}

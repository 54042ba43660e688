"""The target-density protocol every energy implements (docs/spec.md §1).

A target is an unnormalised density r(x) = exp(-E(x)) on R^d. Subclass :class:`Energy`, implement
``log_reward`` (and, where you can, ``sample`` and an analytic ``log_reward_and_grad``), then point the config at
it: ``python scripts/train.py energy._target_=my.module.MyEnergy``.

Every energy counts its own log-reward evaluations (points at which ``log_reward`` and/or ``log_reward_and_grad``
was evaluated) while counting is switched on with :func:`counting_energy_calls`; the training module switches it on
for its steps, evaluation switches it off. Subclasses need do nothing: their methods are wrapped when the class is
defined.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

log = logging.getLogger(__name__)


class NonFiniteRewardError(RuntimeError):
    """Raised when an energy returns NaN/inf log-rewards where finite values are required."""


class Energy(nn.Module):
    """Base class of all continuous targets.

    Attributes (class or instance):
        dim: dimension d of the sample space.
        log_Z: the true log-partition function when known, else ``None``.
        plot_range: (low, high) of the square window used for 2-D plots of dims (0, 1).
        mode_centres: ``[M, d]`` tensor of mixture-mode centres, or ``None`` (enables mode coverage).
        mode_std: per-dimension std of each mode (mode-coverage radius is 3 of these).
        mode_weights: ``[M]`` true mixture weight of each mode (sums to 1; equal by default).
        n_energy_calls: points at which the log-reward (or its gradient) was evaluated while counting was on.
    """

    dim: int = 2
    log_Z: float | None = None
    plot_range: tuple[float, float] = (-10.0, 10.0)
    mode_std: float | None = None
    # call counting (instance attributes once set; see counting_energy_calls)
    n_energy_calls: int = 0
    _counting: bool = False
    _in_call: bool = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for name in _COUNTED:
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "_counts_calls", False):
                setattr(cls, name, _counted(fn))

    @property
    def mode_centres(self) -> torch.Tensor | None:
        return None

    @property
    def mode_weights(self) -> torch.Tensor | None:
        """``[M]`` float64 true weight of each mode in :attr:`mode_centres` (equal by default); ``None`` without
        mode centres."""
        centres = self.mode_centres
        if centres is None:
            return None
        return torch.full((centres.shape[0],), 1.0 / centres.shape[0], dtype=torch.float64)

    @property
    def name(self) -> str:
        return type(self).__name__

    # --- required -------------------------------------------------------------------------------------------
    def log_reward(self, x: torch.Tensor) -> torch.Tensor:
        """log r(x) for ``x`` of shape ``[B, d]``; returns ``[B]``."""
        raise NotImplementedError

    # --- optional, with generic defaults ---------------------------------------------------------------------
    def log_reward_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log r(x) ``[B]``, ∇ log r(x) ``[B, d]``), both detached.

        The default differentiates ``log_reward`` with autograd; it works when the caller is under
        ``torch.no_grad``. Energies with a closed-form gradient override it (it sits on the hot path of the
        Langevin parametrisation).
        """
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            lr = self.log_reward(x)
            (grad,) = torch.autograd.grad(lr.sum(), x)
        return lr.detach(), grad.detach()

    def grad_log_reward(self, x: torch.Tensor) -> torch.Tensor:
        """∇ log r(x), shape ``[B, d]`` (detached)."""
        return self.log_reward_and_grad(x)[1]

    @property
    def has_sampler(self) -> bool:
        return type(self).sample is not Energy.sample

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact samples ``[n, d]`` drawn with ``generator`` (on the energy's device)."""
        raise NotImplementedError(f"{self.name} has no exact sampler")

    def marginal_log_density_2d(self, xy: torch.Tensor) -> torch.Tensor | None:
        """Log of the (possibly unnormalised) marginal density of dims (0, 1) at ``xy [N, 2]``, for plots.

        ``None`` when not available; the default is the full density for 2-D targets.
        """
        if self.dim == 2:
            return self.log_reward(xy)
        return None

    @property
    def device(self) -> torch.device:
        for b in self.buffers():
            return b.device
        return torch.device("cpu")


_COUNTED = ("log_reward", "log_reward_and_grad")


def _counted(fn: Callable) -> Callable:
    """``fn(self, x, ...)`` that adds the number of points in ``x [..., d]`` to ``self.n_energy_calls`` while counting
    is on. Only the outermost counted call counts, so a method that calls another (the default
    ``log_reward_and_grad`` calls ``log_reward``) counts each point once."""

    @functools.wraps(fn)
    def wrapper(self, x, *args, **kwargs):
        if not self._counting or self._in_call:
            return fn(self, x, *args, **kwargs)
        object.__setattr__(self, "n_energy_calls", self.n_energy_calls + math.prod(x.shape[:-1]))
        object.__setattr__(self, "_in_call", True)
        try:
            return fn(self, x, *args, **kwargs)
        finally:
            object.__setattr__(self, "_in_call", False)

    wrapper._counts_calls = True
    return wrapper


for _name in _COUNTED:
    setattr(Energy, _name, _counted(getattr(Energy, _name)))


@contextmanager
def counting_energy_calls(energy, on: bool = True) -> Iterator[None]:
    """Count ``energy``'s log-reward evaluations inside the block (``on=False``: pause counting), then restore the
    previous setting. A no-op for targets that are not :class:`Energy` subclasses.

    Args:
        energy: the target whose ``n_energy_calls`` grows.
        on: whether evaluations inside the block are counted.
    """
    if not isinstance(energy, Energy):
        yield
        return
    before = energy._counting
    object.__setattr__(energy, "_counting", bool(on))
    try:
        yield
    finally:
        object.__setattr__(energy, "_counting", before)


def check_finite(log_reward: torch.Tensor, where: str) -> torch.Tensor:
    """Raise :class:`NonFiniteRewardError` naming ``where`` and the count of non-finite entries."""
    bad = ~torch.isfinite(log_reward)
    if bad.any():
        n = int(bad.sum())
        raise NonFiniteRewardError(f"non-finite log-reward at {where}: {n} of {log_reward.numel()} values")
    return log_reward

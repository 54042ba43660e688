"""The target-density protocol every energy implements (docs/spec.md §1).

A target is an unnormalised density r(x) = exp(-E(x)) on R^d. Subclass :class:`Energy`, implement
``log_reward`` (and, where you can, ``sample`` and an analytic ``log_reward_and_grad``), set the protocol's
attributes in ``__init__``, then point the config at it: ``python scripts/train.py energy._target_=my.module.MyEnergy``.

Every energy counts its own log-reward evaluations (points at which ``log_reward`` and/or ``log_reward_and_grad``
was evaluated) while counting is switched on with :func:`counting_energy_calls`; the training module switches it on
for its steps, evaluation switches it off. Subclasses need do nothing: their methods are wrapped when the class is
defined.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

log = logging.getLogger(__name__)

#: σ² used for an energy that declares no ``t_scale`` and a config that sets none (``model.t_scale: null``).
DEFAULT_T_SCALE = 1.0

#: The protocol's data attributes and their defaults when a subclass sets none (``mode_weights``: computed).
PROTOCOL_DEFAULTS: dict[str, object] = {
    "dim": 2,
    "log_Z": None,
    "plot_range": (-10.0, 10.0),
    "t_scale": None,
    "mode_centres": None,
    "mode_std": None,
    "mode_weights": None,
}
#: The protocol's methods (``log_reward`` is required; the others have defaults).
PROTOCOL_METHODS = ("log_reward", "log_reward_and_grad", "sample", "marginal_log_density_2d")


class NonFiniteRewardError(RuntimeError):
    """Raised when an energy returns NaN/inf log-rewards where finite values are required."""


class Energy(nn.Module):
    """Base class of all continuous targets.

    The protocol's attributes are plain attributes: set them in ``__init__`` (``self.log_Z = 0.0``) or as class
    attributes; tensors may instead be registered with ``register_buffer`` so that ``.to(device)`` moves them, and a
    subclass may define any of them as a property. Unset ones take the defaults below.

    Attributes:
        dim: dimension d of the sample space (default 2).
        log_Z: the true log-partition function when known, else ``None``.
        plot_range: window of the 2-D plots of dims (0, 1): ``(lo, hi)`` for both axes or ``((x_lo, x_hi),
            (y_lo, y_hi))``; default ``(-10, 10)``.
        t_scale: σ², the diffusion coefficient of the reference Brownian motion this target is trained with, or
            ``None`` (not declared: 1.0, said once in the log). ``model.t_scale=X`` in the config overrides it.
        mode_centres: ``[M, d]`` tensor of mixture-mode centres, or ``None`` (enables the mode metrics).
        mode_std: per-dimension std of each mode (the mode-coverage radius is 3 of these), or ``None``.
        mode_weights: ``[M]`` true weight of each mode (sums to 1); unset: equal weights (float64), ``None`` without
            mode centres.
        n_energy_calls: points at which the log-reward (or its gradient) was evaluated while counting was on.

    Derived, read-only: ``name`` (the class name), ``has_sampler`` (``sample`` is overridden by a callable) and
    ``device`` (that of the first buffer or parameter, else where ``.to()`` last moved the energy; assignable for
    energies without tensors).
    """

    dim: int
    log_Z: float | None
    plot_range: tuple[float, float] | tuple[tuple[float, float], tuple[float, float]]
    t_scale: float | None
    mode_centres: torch.Tensor | None
    mode_std: float | None
    mode_weights: torch.Tensor | None
    # call counting (instance attributes once set; see counting_energy_calls)
    n_energy_calls: int = 0
    _counting: bool = False
    _in_call: bool = False
    # where the energy computes when it holds no tensors; `_apply` (hence `.to()`) keeps it current
    _device: torch.device = torch.device("cpu")

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for name in _COUNTED:
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "_counts_calls", False):
                setattr(cls, name, _counted(fn))

    def __getattr__(self, name: str):
        # Reached only when normal lookup fails: parameters and buffers (nn.Module), then the protocol's defaults
        # for attributes no class defines (a failing property of a subclass keeps its AttributeError).
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name not in PROTOCOL_DEFAULTS or hasattr(type(self), name) or self.__dict__.get("_registering") == name:
                raise
        if name == "mode_weights":
            centres = self.mode_centres
            return None if centres is None else equal_mode_weights(centres.shape[0])
        return PROTOCOL_DEFAULTS[name]

    def register_buffer(self, name: str, tensor: torch.Tensor | None, persistent: bool = True) -> None:
        """``nn.Module.register_buffer`` that also accepts the protocol's names (``mode_centres``,
        ``mode_weights``, ...), which otherwise count as existing attributes through their defaults."""
        if name not in PROTOCOL_DEFAULTS:
            return super().register_buffer(name, tensor, persistent)
        if name not in self.__dict__.get("_buffers", {}):
            self.__dict__.pop(name, None)  # a plain value assigned earlier (e.g. ``self.mode_centres = None``)
        object.__setattr__(self, "_registering", name)
        try:
            return super().register_buffer(name, tensor, persistent)
        finally:
            object.__delattr__(self, "_registering")

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
        """Whether ``sample`` is overridden by something callable (``sample = None`` means no sampler)."""
        fn = getattr(self, "sample", None)
        return callable(fn) and getattr(fn, "__func__", None) is not Energy.sample

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

    # --- where it computes ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for t in self.buffers():
            return t.device
        for t in self.parameters():
            return t.device
        return self._device

    @device.setter
    def device(self, value: torch.device | str) -> None:
        object.__setattr__(self, "_device", torch.device(value))

    def _apply(self, fn, recurse: bool = True):
        # ``.to()``, ``.cuda()``, ``.cpu()``, ``to_empty()`` ... all call ``_apply(fn)``: apply ``fn`` to an empty
        # tensor on the recorded device too, so that an energy without tensors knows where it was moved.
        # A tensor cannot be copied off the meta device: a move from there is recognised by failing on it.
        out = super()._apply(fn, recurse)
        for device in (self._device, torch.device("cpu")):
            try:
                moved = fn(torch.empty(0, device=device))
            except Exception:  # noqa: BLE001 - an ``fn`` this probe cannot take: try the next, else keep the device
                continue
            if isinstance(moved, torch.Tensor):
                object.__setattr__(self, "_device", moved.device)
            break
        return out


def equal_mode_weights(n_modes: int) -> torch.Tensor:
    """``[n_modes]`` float64 weights 1/M: the default ``mode_weights`` of an energy with mode centres."""
    return torch.full((n_modes,), 1.0 / n_modes, dtype=torch.float64)


def plot_limits(energy) -> tuple[tuple[float, float], tuple[float, float]]:
    """The plot window of dims (0, 1) as ``((x_lo, x_hi), (y_lo, y_hi))``, from ``energy.plot_range``.

    Args:
        energy: a target whose ``plot_range`` is ``(lo, hi)`` (both axes) or ``((x_lo, x_hi), (y_lo, y_hi))``.

    Returns:
        The limits of the x and the y axis.

    Raises:
        ValueError: ``plot_range`` has another form, a non-finite bound, or a low bound not below its high one.
    """
    value = getattr(energy, "plot_range", PROTOCOL_DEFAULTS["plot_range"])
    try:
        pairs = [_bounds(value)] * 2 if _is_number(value[0]) else [_bounds(value[0]), _bounds(value[1])]
        if len(value) != 2:
            raise ValueError
    except (TypeError, ValueError, IndexError):
        raise ValueError(
            f"plot_range must be (lo, hi) or ((x_lo, x_hi), (y_lo, y_hi)) with finite lo < hi (got {value!r})"
        ) from None
    return pairs[0], pairs[1]


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) or (isinstance(v, torch.Tensor) and v.ndim == 0)


def _bounds(pair) -> tuple[float, float]:
    if len(pair) != 2 or not all(_is_number(v) for v in pair):
        raise ValueError
    lo, hi = float(pair[0]), float(pair[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError
    return lo, hi


# ------------------------------------------------------------------------------------------------ diffusion σ²
_LOGGED_DEFAULT: weakref.WeakSet = weakref.WeakSet()  # energies whose undeclared σ² was already reported


def declared_t_scale(energy) -> tuple[float, bool]:
    """The σ² an energy declares (its ``t_scale``), or :data:`DEFAULT_T_SCALE` when it declares none.

    Args:
        energy: a target; ``t_scale`` is read as an attribute (class or instance), ``None`` or missing: undeclared.

    Returns:
        ``(σ², declared)``.

    Raises:
        ValueError: the declared value is not a finite positive number.
    """
    value = getattr(energy, "t_scale", None)
    if value is None:
        return DEFAULT_T_SCALE, False
    if not _is_number(value) or not math.isfinite(float(value)) or float(value) <= 0:
        raise ValueError(f"t_scale must be a finite positive number or None (got {value!r})")
    return float(value), True


def resolve_t_scale(configured: float | None, energy) -> float:
    """The σ² a diffusion sampler of ``energy`` uses: ``configured`` (``model.t_scale``) when it is a number, else
    the energy's declared ``t_scale``, else :data:`DEFAULT_T_SCALE` — said in one info line per energy.

    Args:
        configured: ``model.t_scale`` (``None``: the energy's).
        energy: the target.

    Returns:
        σ² > 0.
    """
    if configured is not None:
        return float(configured)
    value, declared = declared_t_scale(energy)
    if not declared:
        try:
            first = energy not in _LOGGED_DEFAULT
            _LOGGED_DEFAULT.add(energy)
        except TypeError:  # not weak-referenceable
            first = True
        if first:
            log.info(
                "%s declares no diffusion coefficient: using σ² = %s; declare it with a `t_scale = <σ²>` attribute "
                "on the energy, or set model.t_scale=<σ²>",
                getattr(energy, "name", type(energy).__name__),
                value,
            )
    return value


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

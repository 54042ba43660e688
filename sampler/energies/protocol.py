"""Check that an energy keeps the protocol's shapes before anything trains on it.

A plug-in energy (``energy._target_=my.module.MyEnergy``) whose ``log_reward`` returns ``[B, 1]`` instead of
``[B]`` broadcasts every loss to ``[B, B]``: the run trains on a wrong objective, writes checkpoints, and fails only
at the first evaluation. :func:`check_energy` calls each method once on a few probe points and names the first
output whose shape, dtype or device is wrong, in one line.

Only shapes, dtypes and devices are checked: a non-finite log-reward at a probe point is allowed (a target may be
``-inf`` outside its support). The protocol's attributes are checked too (``plot_range``, ``t_scale``,
``mode_weights``), and so is their spelling: ``mode_centers`` or ``logZ`` would otherwise be silently ignored.

:func:`declared_t_scale` and :func:`resolve_t_scale` (defined with :class:`~sampler.energies.base.Energy`) give the
σ² a sampler of the energy uses when ``model.t_scale`` is ``null``.
"""

from __future__ import annotations

import numbers

import torch

from sampler.energies.base import (
    PROTOCOL_DEFAULTS,
    PROTOCOL_METHODS,
    Energy,
    declared_t_scale,
    plot_limits,
    resolve_t_scale,
)
from sampler.training.config_check import ConfigError, root_cause

__all__ = ["N_PROBE", "PROBE_SEED", "check_energy", "declared_t_scale", "resolve_t_scale"]

#: Points the methods are called on: few, so that even an expensive energy is checked in a moment.
N_PROBE = 3
#: Seed of the private generator that draws the probe points (the global RNG is never touched).
PROBE_SEED = 0


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(n) for n in t.shape) + "]"


def _energy_device(energy) -> torch.device:
    """The device ``energy`` computes on: its ``device`` attribute, else that of its first parameter or buffer, else
    the CPU."""
    device = getattr(energy, "device", None)
    if isinstance(device, torch.device):
        return device
    for t in (*energy.parameters(), *energy.buffers()):
        return t.device
    return torch.device("cpu")


def _spelling_key(name: str) -> str:
    """``name`` with case, underscores, US spelling and a plural ending removed: ``mode_centers`` and
    ``mode_centres`` share a key, as do ``logZ``/``log_Z`` and ``plot_ranges``/``plot_range``."""
    key = name.lower().replace("_", "").replace("center", "centre").replace("gradient", "grad")
    return key.rstrip("s")


_PROTOCOL_KEYS = {_spelling_key(n): n for n in (*PROTOCOL_DEFAULTS, *PROTOCOL_METHODS)}


def _own_names(energy) -> dict[str, object]:
    """Public names ``energy`` defines beyond :class:`Energy`/``nn.Module``, with their (static) values: instance
    attributes, parameters, buffers, sub-modules and the attributes of its own classes."""
    names: dict[str, object] = {}
    for cls in reversed(type(energy).__mro__):
        if cls is object or issubclass(Energy, cls) or cls.__module__.startswith("torch."):
            continue  # Energy, nn.Module and their bases: the protocol's own definitions
        names.update(cls.__dict__)
    names.update(vars(energy))
    for store in ("_parameters", "_buffers", "_modules"):
        names.update(vars(energy).get(store, {}))
    return {k: v for k, v in names.items() if not k.startswith("_")}


def _misspelt(energy) -> tuple[str, str] | None:
    """``(name set, protocol name meant)`` for the first attribute or method whose name is a variant of a protocol
    name the energy does not set itself (``mode_centers`` without ``mode_centres``), else ``None``."""
    own = _own_names(energy)
    for name, value in own.items():
        meant = _PROTOCOL_KEYS.get(_spelling_key(name))
        if meant is None or meant == name or meant in own:
            continue
        if not isinstance(energy, Energy) and hasattr(energy, meant):
            continue
        if meant in PROTOCOL_METHODS and not callable(value):
            continue  # e.g. a tensor of reference points called ``samples``: not a misspelt method
        return name, meant
    return None


class _Probe:
    """Calls to ``energy``'s methods whose failures read ``energy._target_=T: <method> ...``."""

    def __init__(self, energy, target_name: str):
        self.energy, self.target = energy, target_name

    def error(self, method: str, problem: str) -> ConfigError:
        return ConfigError(f"energy._target_={self.target}: {method} {problem}")

    def call(self, method: str, *args):
        try:
            return getattr(self.energy, method)(*args)
        except Exception as err:  # noqa: BLE001 - the user's code: any exception becomes one line naming the method
            raise self.error(method, f"failed on a probe batch: {root_cause(err)}") from err

    def tensor(self, method: str, value, shape: tuple[int, ...], expected: str, device: torch.device, what: str = ""):
        """Require ``value`` to be a floating tensor of ``shape`` on ``device``; ``what`` names the output of a method
        that returns several."""
        of = f" for {what}" if what else ""
        if not isinstance(value, torch.Tensor):
            raise self.error(
                method, f"returned {type(value).__name__}{of}; expected a torch.Tensor of shape {expected}"
            )
        if tuple(value.shape) != shape:
            raise self.error(method, f"returned shape {_shape(value)}{of}; expected {expected}")
        if not value.is_floating_point():
            raise self.error(method, f"returned dtype {value.dtype}{of}; expected a floating dtype")
        if value.device != device:
            raise self.error(method, f"returned a tensor on {value.device}{of}; expected one on {device}")


def check_energy(energy, target_name: str) -> None:
    """Raise :class:`ConfigError` (one line naming the target, the method and the shapes) unless ``energy`` keeps
    the protocol: a positive integer ``dim``; ``log_reward(x [3, d])`` → ``[3]``; ``log_reward_and_grad`` →
    (``[3]``, ``[3, d]``); ``sample(3, generator)`` → ``[3, d]`` when ``has_sampler``; ``mode_centres`` →
    ``[M, d]`` (M ≥ 1) when not ``None``, with ``mode_weights`` ``[M]``, non-negative and summing to 1;
    ``plot_range`` one of its two forms; ``t_scale`` ``None`` or a positive number; no misspelt protocol name
    (``mode_centers``). Outputs must be floating tensors on the energy's device.

    The probe points are float32 standard normals drawn from a private ``torch.Generator``, so the global RNG (and
    hence every seeded run) is untouched. Calls run under ``torch.no_grad``, as training makes them, and do not add
    to the energy's ``n_energy_calls``.

    Args:
        energy: the built target (an ``nn.Module`` with ``dim`` and ``log_reward``).
        target_name: what the config named it by (``energy._target_``), for the message.
    """
    wrong = _misspelt(energy)
    if wrong is not None:
        raise ConfigError(
            f"energy._target_={target_name}: it defines `{wrong[0]}`, which the platform never reads; the protocol "
            f"spells it `{wrong[1]}` (rename it)"
        )
    dim = getattr(energy, "dim", None)
    if not isinstance(dim, numbers.Integral) or isinstance(dim, bool) or dim <= 0:
        raise ConfigError(f"energy._target_={target_name}: dim must be a positive integer (got {dim!r})")
    dim = int(dim)
    device = _energy_device(energy)
    probe = _Probe(energy, target_name)
    calls_before = getattr(energy, "n_energy_calls", None)
    x = torch.randn(N_PROBE, dim, generator=torch.Generator().manual_seed(PROBE_SEED)).to(device)  # [3, d]
    x_shape = f"[{N_PROBE}, {dim}]"
    one_per_row = f"[{N_PROBE}] (one log-reward per row of x {x_shape})"
    try:
        with torch.no_grad():
            lr = probe.call("log_reward", x.clone())
            probe.tensor("log_reward", lr, (N_PROBE,), one_per_row, device)
            if hasattr(energy, "log_reward_and_grad"):
                out = probe.call("log_reward_and_grad", x.clone())
                if not isinstance(out, (tuple, list)) or len(out) != 2:
                    raise probe.error(
                        "log_reward_and_grad",
                        f"returned {type(out).__name__}; expected a pair (log r [{N_PROBE}], ∇log r {x_shape})",
                    )
                probe.tensor("log_reward_and_grad", out[0], (N_PROBE,), one_per_row, device, "log r")
                probe.tensor(
                    "log_reward_and_grad", out[1], (N_PROBE, dim), f"{x_shape} (the shape of x)", device, "∇log r"
                )
            if getattr(energy, "has_sampler", False):
                gen = torch.Generator(device=device).manual_seed(PROBE_SEED)
                samples = probe.call("sample", N_PROBE, gen)
                probe.tensor("sample", samples, (N_PROBE, dim), f"{x_shape} ({N_PROBE} points of dim {dim})", device)
    finally:
        if calls_before is not None and getattr(energy, "n_energy_calls", None) != calls_before:
            energy.n_energy_calls = calls_before  # the probe is not part of the training budget
    centres = _attribute(energy, "mode_centres", probe)
    if centres is not None:
        if not isinstance(centres, torch.Tensor) or centres.ndim != 2 or centres.shape[1] != dim or len(centres) == 0:
            got = _shape(centres) if isinstance(centres, torch.Tensor) else type(centres).__name__
            raise ConfigError(
                f"energy._target_={target_name}: mode_centres is {got}; expected [M, {dim}] (one row per mode, M ≥ 1) "
                "or None"
            )
        _check_mode_weights(energy, probe, len(centres))
    try:
        plot_limits(energy)
        declared_t_scale(energy)
    except ValueError as err:
        raise ConfigError(f"energy._target_={target_name}: {err}") from err


def _attribute(energy, name: str, probe: _Probe):
    """``energy.<name>`` (``None`` when a target that is no :class:`Energy` lacks it); the failure of a property
    that computes it is one line, also when it is an ``AttributeError`` (``getattr`` with a default would hide it)."""
    try:
        if isinstance(energy, Energy) or hasattr(type(energy), name):
            return getattr(energy, name)
        return getattr(energy, name, None)
    except Exception as err:  # noqa: BLE001 - the user's code
        raise probe.error(name, f"failed: {root_cause(err)}") from err


def _check_mode_weights(energy, probe: _Probe, n_modes: int) -> None:
    weights = _attribute(energy, "mode_weights", probe)
    if weights is None:
        return
    expected = f"[{n_modes}] (one weight per mode centre)"
    if not isinstance(weights, torch.Tensor) or tuple(weights.shape) != (n_modes,):
        got = _shape(weights) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise probe.error("mode_weights", f"is {got}; expected {expected} or None (equal weights)")
    w = weights.detach().double().cpu()
    if not bool(torch.isfinite(w).all() and (w >= 0).all()) or abs(float(w.sum()) - 1.0) > 1e-5:
        raise probe.error("mode_weights", f"must be non-negative and sum to 1 (sum {float(w.sum()):.6g})")

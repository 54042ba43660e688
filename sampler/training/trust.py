"""Which ``_target_``s a saved run config may name before anything is built from it.

Re-evaluating, sampling from or reproducing a run builds objects from the ``_target_``s of its
``config_resolved.yaml``; Hydra imports and calls whatever dotted name is there. A run directory that someone
else wrote (a shared scratch disk, a downloaded archive) could name any callable — ``os.system``, or
``torch.hub.load`` with a local ``hubconf.py`` — and it would run before any error. So every ``_target_`` in the
config (in nested sections and lists, ``_args_`` included) must be one of the platform's own classes (defined in a
``sampler.*`` module; a path through a ``sampler`` module to something imported there does not count), or a name
the user trusts explicitly on the command line (``trust=my.module.MyEnergy``; ``--trust`` for ``reproduce.py``).
A ``_target_`` in a ``hydra`` section is never accepted: a run config holds none.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable

from omegaconf import DictConfig, ListConfig, OmegaConf

from sampler.training.config_check import ConfigError

PLATFORM = "sampler"


class UntrustedTargetError(ConfigError):
    """A ``_target_`` that is neither the platform's own class nor trusted explicitly; the message is one line."""


def parse_trusted(value: str | Iterable[str] | None) -> list[str]:
    """``"a.B,c.D"`` (or several such strings) as the list of dotted names ``["a.B", "c.D"]``."""
    if value is None:
        return []
    parts = [value] if isinstance(value, str) else list(value)
    return [name.strip() for part in parts for name in str(part).split(",") if name.strip()]


def is_platform_class(target: str) -> bool:
    """Whether ``target`` names a class defined in a ``sampler.*`` module (importing only ``sampler`` modules)."""
    if not (target == PLATFORM or target.startswith(PLATFORM + ".")):
        return False
    from hydra._internal.utils import _locate

    try:
        obj = _locate(target)
    except Exception:  # noqa: BLE001 - a name that cannot be found is not a platform class
        return False
    module = getattr(obj, "__module__", None) or ""
    return inspect.isclass(obj) and (module == PLATFORM or module.startswith(PLATFORM + "."))


def _walk(node, path: str):
    """``(key path, value)`` of every ``_target_`` under ``node`` (plain dicts and lists)."""
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                yield where, value
            else:
                yield from _walk(value, where)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def check_targets(
    cfg: DictConfig | dict, trusted: Iterable[str] = (), source: str | None = None, option: str = "trust="
) -> None:
    """Raise :class:`UntrustedTargetError` unless every ``_target_`` of ``cfg`` may be built.

    Args:
        cfg: a run config (as loaded from ``config_resolved.yaml``); interpolations are resolved first, so a
            target produced by one is checked too.
        trusted: exact dotted names the user allows besides the platform's classes.
        source: where the config came from, for the message (e.g. the file).
        option: how the user passes a trusted name (``trust=`` for eval/sample, ``--trust `` for reproduce).

    Raises:
        UntrustedTargetError: naming the key, the target and how to trust it.
    """
    where = f"{source}: " if source else ""
    if isinstance(cfg, (DictConfig, ListConfig)):
        try:
            cfg = OmegaConf.to_container(cfg, resolve=True)
        except Exception as err:  # noqa: BLE001 - any failure to resolve means the targets cannot be checked
            first = " ".join(str(err).split())[:200]
            raise UntrustedTargetError(f"{where}the config's targets cannot be checked: {first}") from err
    allowed = set(trusted)
    for key, target in _walk(cfg, ""):
        if key.startswith(("hydra.", "hydra[")):
            raise UntrustedTargetError(
                f"{where}{key}={target!r}: a target under `hydra` is never accepted (a run config has none)"
            )
        if not isinstance(target, str):
            raise UntrustedTargetError(f"{where}{key} must be a dotted name (got {target!r})")
        if target in allowed or is_platform_class(target):
            continue
        raise UntrustedTargetError(
            f"{where}{key}={target} is not one of the platform's classes (sampler.*) and would run its code; "
            f"if you trust it, pass {option}{target}"
        )

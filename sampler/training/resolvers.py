"""OmegaConf resolvers the config tree uses; importing :mod:`sampler.training` registers them."""

from __future__ import annotations

from omegaconf import OmegaConf


def _floordiv(a, b) -> int:
    return int(a) // int(b)


def _sweep_subdir(override_dirname: str, seed) -> str:
    """``<overrides without the seed>/seed=N`` (just ``seed=N`` when the seed is the only override)."""
    prefix = str(override_dirname).strip()
    return f"{prefix}/seed={seed}" if prefix else f"seed={seed}"


def register_resolvers() -> None:
    for name, fn in (("floordiv", _floordiv), ("sweep_subdir", _sweep_subdir)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)

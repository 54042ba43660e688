"""OmegaConf resolvers the config tree uses; importing :mod:`sampler.training` registers them."""

from __future__ import annotations

from omegaconf import OmegaConf


def _floordiv(a, b) -> int:
    return int(a) // int(b)


def _half_run(max_steps) -> int:
    """Half of a run's steps, at least 1: the default exploration horizon (``trainer.max_steps=1`` still works)."""
    return max(1, int(max_steps) // 2)


def _sweep_subdir(override_dirname: str, seed) -> str:
    """``<overrides without the seed>/seed=N`` (just ``seed=N`` when the seed is the only override)."""
    prefix = str(override_dirname).strip()
    return f"{prefix}/seed={seed}" if prefix else f"seed={seed}"


def register_resolvers() -> None:
    for name, fn in (("floordiv", _floordiv), ("half_run", _half_run), ("sweep_subdir", _sweep_subdir)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)

"""Rebuild a trained sampler from a checkpoint and its run's saved config (for eval/sample scripts and users).

The config's ``_target_``s are checked before anything is built or the checkpoint is read
(:mod:`sampler.training.trust`): only the platform's own classes, and the names passed in ``trust``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from sampler.training.checkpointing import CheckpointError, load_checkpoint
from sampler.training.legacy import upgrade_config
from sampler.training.module import SamplerModule
from sampler.training.tasks import build_module
from sampler.training.trust import check_targets


def config_path(ckpt: str | Path, config: str | Path | None = None) -> Path:
    """The run config of ``ckpt``: ``config`` when given, else ``config_resolved.yaml`` two directories above it."""
    return Path(config) if config is not None else Path(ckpt).resolve().parent.parent / "config_resolved.yaml"


def load_config(ckpt: str | Path, config: str | Path | None = None, trusted: Iterable[str] = ()) -> DictConfig:
    """The run config of ``ckpt`` (see :func:`config_path`), after checking its targets.

    Raises:
        CheckpointError: the config does not exist or is not YAML.
        sampler.training.trust.UntrustedTargetError: a ``_target_`` that is neither the platform's nor trusted.
    """
    path = config_path(ckpt, config)
    if not path.is_file():
        raise CheckpointError(f"no config for {ckpt}: {path} does not exist (pass config=PATH)")
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # noqa: BLE001 - any parse failure means: not a run config
        why = f"{type(err).__name__}: {' '.join(str(err).split())}"
        raise CheckpointError(f"{path} is not a YAML run config ({why})") from err
    if not isinstance(cfg, DictConfig):
        raise CheckpointError(f"{path} is not a run config (a YAML mapping)")
    cfg = upgrade_config(cfg)  # a run of an earlier version: its config in today's layout
    check_targets(cfg, trusted, source=str(path))
    return cfg


def load_module(
    ckpt: str | Path,
    config: str | Path | None = None,
    device: str = "cpu",
    trusted: Iterable[str] = (),
    before_build: Callable[[DictConfig], None] | None = None,
) -> tuple[SamplerModule, DictConfig, int]:
    """Load ``ckpt`` (``RUN/checkpoints/last.ckpt``) into a :class:`SamplerModule`.

    Args:
        ckpt: checkpoint path.
        config: the run's ``config_resolved.yaml``; by default found two directories above the checkpoint.
        device: where to put the module.
        trusted: dotted ``_target_`` names to build besides the platform's own classes.
        before_build: called with the checked config before the checkpoint is read and the module built (a
            memory check, say).

    Returns:
        ``(module, cfg, step)``.

    Raises:
        CheckpointError, sampler.training.config_check.ConfigError: see :func:`load_config`; an unreadable
            checkpoint, or one that does not match the config's model.
    """
    if not Path(ckpt).is_file():
        raise CheckpointError(f"checkpoint not found: {ckpt}")
    cfg = load_config(ckpt, config, trusted)
    config = config_path(ckpt, config)
    if before_build is not None:
        before_build(cfg)
    ckpt = Path(ckpt)
    state = load_checkpoint(ckpt)
    torch.manual_seed(int(cfg.seed))
    module = build_module(cfg)
    try:
        module.load_state_dict(state["state_dict"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {ckpt} does not match the model of {config}: {first}") from err
    module.on_load_checkpoint(state)
    module.to(device)
    module.eval()
    return module, cfg, int(state["global_step"])

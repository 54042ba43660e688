"""Rebuild a trained sampler from a checkpoint and its run's saved config (for eval/sample scripts and users)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from sampler.training.checkpointing import CheckpointError, load_checkpoint
from sampler.training.module import SamplerModule


def load_module(
    ckpt: str | Path, config: str | Path | None = None, device: str = "cpu"
) -> tuple[SamplerModule, DictConfig, int]:
    """Load ``ckpt`` (``RUN/checkpoints/last.ckpt``) into a :class:`SamplerModule`.

    Args:
        ckpt: checkpoint path.
        config: the run's ``config_resolved.yaml``; by default found two directories above the checkpoint.
        device: where to put the module.

    Returns:
        ``(module, cfg, step)``.
    """
    ckpt = Path(ckpt)
    state = load_checkpoint(ckpt)
    config = Path(config) if config is not None else ckpt.resolve().parent.parent / "config_resolved.yaml"
    if not config.is_file():
        raise CheckpointError(f"no config for {ckpt}: {config} does not exist (pass config=PATH)")
    cfg = OmegaConf.load(config)
    torch.manual_seed(int(cfg.seed))
    module = SamplerModule(cfg)
    try:
        module.load_state_dict(state["state_dict"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {ckpt} does not match the model of {config}: {first}") from err
    module.on_load_checkpoint(state)
    module.to(device)
    module.eval()
    return module, cfg, int(state["global_step"])

"""Saved run configs of earlier versions, in today's layout.

A run directory keeps the config it was trained with (``config_resolved.yaml``, ``.hydra/config.yaml``);
evaluating, sampling from, reproducing or resuming an older run reads that file, so every renamed or moved config
key has its translation here, applied by :func:`upgrade_config` wherever a saved config is loaded.

This module imports no torch: ``summarize`` and ``diff_runs`` read saved configs through it and answer at once.

Translations so far:

- ``buffer``, ``local_search`` and ``teacher`` selected their class by ``name:`` (``buffer.name: rank``); they now
  name it by ``_target_`` (``_partial_: true`` where the run supplies an argument: a buffer's ``dim``, a
  teacher's network), and the ``none`` options hold no key at all.
- ``model.native: auto|true|false`` chose the native kernels; ``model.engine`` now chooses the engine (``auto``,
  ``native``, ``fused``: the same computations). The diffusion model also gained ``activation: gelu`` and
  ``layer_norm: false``, which older configs lack and always meant.
- The ``intrinsic`` group (an intrinsic reward such as GAFN) is newer than some runs: a sampler config without it
  had none (``intrinsic: {}``).
"""

from __future__ import annotations

import copy

from omegaconf import DictConfig, OmegaConf, open_dict

#: ``group -> {old name: (_target_, _partial_)}``; a ``None`` target: the option builds nothing.
NAMED_GROUPS: dict[str, dict[str, tuple[str | None, bool]]] = {
    "buffer": {
        "none": (None, False),
        "uniform": ("sampler.buffers.ReplayBuffer", True),
        "reward": ("sampler.buffers.RewardBuffer", True),
        "rank": ("sampler.buffers.RankBuffer", True),
        "per": ("sampler.buffers.PERBuffer", True),
    },
    "local_search": {
        "none": (None, False),
        "mala": ("sampler.local_search.MALA", False),
    },
    "teacher": {
        "none": (None, False),
        "adaptive": ("sampler.adaptive_teacher.AdaptiveTeacher", True),
    },
}


def _upgrade_named_group(cfg: DictConfig, group: str) -> None:
    node = cfg.get(group)
    if not isinstance(node, DictConfig) or "name" not in node or "_target_" in node:
        return
    name = node.name
    if name not in NAMED_GROUPS[group]:
        from sampler.training.config_check import ConfigError  # noqa: PLC0415 - keeps this module torch-free

        raise ConfigError(
            f"{group}.name={name} in a saved config is not an option this version knows "
            f"({', '.join(NAMED_GROUPS[group])}); edit the file to a current {group} option"
        )
    target, partial = NAMED_GROUPS[group][name]
    rest = {k: v for k, v in OmegaConf.to_container(node, resolve=False).items() if k != "name"}
    if target is None:
        # a `none` option of that time held only its name: anything else beside it was never read
        new = {}
    else:
        new = {"_target_": target, **({"_partial_": True} if partial else {}), **rest}
    with open_dict(cfg):
        cfg[group] = new


def upgrade_config(cfg: DictConfig) -> DictConfig:
    """A saved run config (``config_resolved.yaml`` or ``.hydra/config.yaml``) in today's layout.

    Configs already in today's layout come back unchanged (equal), so it is safe to apply to any saved config.

    Args:
        cfg: the config as loaded (``OmegaConf.load``); not modified.

    Returns:
        A new config with every old key translated (see the module docstring).

    Raises:
        ConfigError: an old option this version cannot translate (one line naming the key).
    """
    cfg = copy.deepcopy(cfg)
    for group in NAMED_GROUPS:
        _upgrade_named_group(cfg, group)
    _upgrade_diffusion_model(cfg)
    if cfg.get("task", "sampler") == "sampler" and "loss" in cfg and "intrinsic" not in cfg:
        with open_dict(cfg):
            cfg.intrinsic = {}
    return cfg


#: ``model.native`` value -> the ``model.engine`` that computes the same.
NATIVE_TO_ENGINE = {"auto": "auto", "true": "native", "false": "fused"}


def _upgrade_diffusion_model(cfg: DictConfig) -> None:
    model = cfg.get("model")
    if not isinstance(model, DictConfig) or model.get("_target_") != "sampler.gfn.DiffusionGFN":
        return
    with open_dict(model):
        if "native" in model:
            value = model.native
            mode = NATIVE_TO_ENGINE.get({True: "true", False: "false"}.get(value, str(value).lower()))
            if mode is None:
                from sampler.training.config_check import ConfigError  # noqa: PLC0415 - keeps this module torch-free

                raise ConfigError(f"model.native={value} in a saved config is not one of auto, true, false")
            del model["native"]
            if "engine" not in model:
                model.engine = mode
        if "activation" not in model:
            model.activation = "gelu"
        if "layer_norm" not in model:
            model.layer_norm = False

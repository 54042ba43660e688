"""The platform's tasks, chosen by ``task=`` on the command line (``conf/task/``): which LightningModule a run trains,
and which checks its config passes. Everything else — the run directory, resume, locking, signals, sweeps, loggers,
``metrics.csv``/``metrics.json`` — is shared (:mod:`sampler.training.run`).

* ``sampler`` (the default): a GFlowNet sampler of the ``energy`` group's target (:class:`SamplerModule`; a discrete
  target selects the discrete GFN by itself). Its config has no ``task`` key.
* ``ebm``: an energy-based model learned from data (``sampler.ebm.module.EBMModule``); its config has ``task: ebm``.

A module of a task other than ``sampler`` evaluates itself: ``module.evaluate_at(step, K, plot_path, noise_seed=,
title=)`` returns ``(metrics, samples)`` as :func:`sampler.training.callbacks.run_evaluation` does for samplers.
"""

from __future__ import annotations

from omegaconf import DictConfig

from sampler.training.config_check import ConfigError

TASKS = ("sampler", "ebm")


def task_of(cfg: DictConfig) -> str:
    """The config's task (``sampler`` when it has no ``task`` key)."""
    task = cfg.get("task") or "sampler"
    if task not in TASKS:
        raise ConfigError(f"task={task} is not a task; choose one of: {', '.join(TASKS)}")
    return str(task)


def check_task_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` on the first value of ``cfg`` its task cannot work with."""
    if task_of(cfg) == "ebm":
        from sampler.ebm.config import check_ebm_config  # noqa: PLC0415 - only EBM runs import the EBM code

        check_ebm_config(cfg)
    else:
        from sampler.training.config_check import check_config  # noqa: PLC0415

        check_config(cfg)


def build_module(cfg: DictConfig):
    """The LightningModule that trains ``cfg``'s task."""
    if task_of(cfg) == "ebm":
        from sampler.ebm.module import EBMModule  # noqa: PLC0415

        return EBMModule(cfg)
    from sampler.training.module import SamplerModule  # noqa: PLC0415

    return SamplerModule(cfg)

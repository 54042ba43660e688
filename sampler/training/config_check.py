"""Fail fast on a bad configuration, before anything is built: one line naming the key and what is allowed.

Unknown group options (``energy=gmm26``) and misspelt keys (``model.hidden_dimm=3``) fail when the config is
composed (``sampler.composing`` turns Hydra's message into one line); this module checks the values: no NaN
anywhere, enumerations, finite positive sizes and rates, which objectives work with which flows and training
phases, and Lightning ``Trainer`` settings the sampler can train under (one device, float32).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from sampler.buffers import BUFFERS
from sampler.gfn.diffusion import FLOWS
from sampler.losses import ALIASES, LOSSES
from sampler.training.phases import PhaseSchedule

PHASES = PhaseSchedule.KINDS
BACKWARD_SOURCES = ("exact", "buffer", "local_search")
BUFFER_NAMES = ("none", *BUFFERS)
LOCAL_SEARCHES = ("none", "mala")
ARCHS = ("pis", "mlp")


#: The config tree beside the package (an editable install); the key checks below are skipped without it.
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
#: Sections nothing reads as keyword arguments: a key added with ``+`` that they do not define would be ignored.
ROOT_SECTIONS = ("train", "eval", "checkpoint")
GROUP_SECTIONS = ("buffer", "local_search", "teacher")
#: ``trainer.*`` keys the run itself reads (the rest are Lightning ``Trainer`` arguments).
RUN_TRAINER_KEYS = ("max_steps", "log_every_n_steps")
#: ``trainer.precision`` values that train: the native kernels and the float32 buffers of the policy, the energies
#: and the log-density sums fail under mixed (``16-mixed``, ``bf16-mixed``) and 16- or 64-bit precision.
PRECISIONS = ("32-true", "32")
#: ``trainer.strategy`` values that keep the run in this process on one device.
STRATEGIES = ("auto", "single_device")
#: Appended to the one-line error for a multi-device or multi-node trainer.
ONE_DEVICE_HINT = (
    "the sampler trains on one device (a multi-device strategy would start a copy of this script per device); "
    "to use several devices or cores, run several seeds at once: python scripts/train.py -m seed=0,1,2,3 launcher=local"
)


class ConfigError(ValueError):
    """A configuration value that cannot work; the message is one line naming the key."""


def _choice(key: str, value, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"{key}={value} is not an option; choose one of: {', '.join(allowed)}")


def _positive(cfg: DictConfig, *keys: str, integer: bool = True, allow_zero: bool = False) -> None:
    for key in keys:
        value = cfg
        for part in key.split("."):
            value = value[part]
        if integer:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        finite = ok and math.isfinite(value)
        if not finite or value < 0 or (value == 0 and not allow_zero):
            what = ("a non-negative" if allow_zero else "a positive") + (" integer" if integer else " number")
            if ok and not finite:
                what = what.replace("a ", "a finite ", 1)
            raise ConfigError(f"{key} must be {what} (got {value!r})")


def innermost(err: BaseException) -> BaseException:
    """The exception at the end of ``err``'s ``__cause__`` chain (what a wrapped build error really was)."""
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def root_cause(err: BaseException) -> str:
    """``Type: message`` of the innermost exception, on one line (for a ConfigError's message)."""
    cause = innermost(err)
    return f"{type(cause).__name__}: {one_line(cause)}"


def loss_name(name: str) -> str:
    return ALIASES.get(name, name)


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` on the first value that cannot work."""
    _check_no_nan(cfg)
    all_losses = list(LOSSES) + list(ALIASES)
    _choice("loss.name", cfg.loss.name, all_losses)
    _choice("model.flow", cfg.model.flow, FLOWS)
    _choice("model.arch", cfg.model.arch, ARCHS)
    _choice("train.phases", cfg.train.phases, PHASES)
    _choice("train.backward_source", cfg.train.backward_source, BACKWARD_SOURCES)
    _choice("train.backward_loss", cfg.train.backward_loss, all_losses)
    if cfg.get("seed") is None or not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError(f"seed must be a non-negative integer (got {cfg.get('seed')!r})")
    _positive(
        cfg,
        "trainer.max_steps",
        "train.batch_size",
        "model.T",
        "model.hidden_dim",
        "eval.every",
        "eval.K",
        "checkpoint.every",
    )
    _positive(cfg, "model.num_layers", allow_zero=True)
    _positive(cfg, "model.t_scale", "train.lr_policy", "train.lr_flow", "train.lr_back", "loss.lam", integer=False)
    _positive(cfg, "train.weight_decay", integer=False, allow_zero=True)
    if cfg.train.grad_clip is not None:
        _positive(cfg, "train.grad_clip", integer=False)
    if cfg.eval.K < 2:
        raise ConfigError(f"eval.K must be at least 2 (got {cfg.eval.K})")
    if cfg.model.learned_variance:
        _positive(cfg, "model.log_var_range", integer=False)

    flow = cfg.model.flow
    phases = cfg.train.phases
    fwd, bwd = loss_name(cfg.loss.name), loss_name(cfg.train.backward_loss)
    if phases in ("forward", "both_ways"):
        spec = LOSSES[fwd]
        if not spec.forward:
            raise ConfigError(
                f"loss={cfg.loss.name} trains on backward trajectories only; "
                f"set train.phases=backward (got train.phases={phases})"
            )
        if flow not in spec.flows:
            raise ConfigError(f"loss={cfg.loss.name} needs model.flow in {{{', '.join(spec.flows)}}} (got {flow})")
    if phases in ("backward", "both_ways"):
        spec = LOSSES[bwd]
        key = "train.backward_loss" if phases == "both_ways" else "loss.name"
        if not spec.backward:
            ok = [n for n, s in LOSSES.items() if s.backward]
            raise ConfigError(
                f"{key}={cfg.train.backward_loss} cannot train on backward trajectories; choose one of: {', '.join(ok)}"
            )
        if flow not in spec.flows:
            raise ConfigError(f"train.backward_loss={bwd} needs model.flow in {{{', '.join(spec.flows)}}} (got {flow})")
    uses_vargrad = (phases in ("forward", "both_ways") and fwd == "vargrad") or (
        phases in ("backward", "both_ways") and bwd == "vargrad"
    )
    if uses_vargrad and cfg.train.batch_size < 2:
        raise ConfigError(
            f"vargrad centres δ on the batch mean, so its loss is 0 for one trajectory: "
            f"train.batch_size must be at least 2 (got {cfg.train.batch_size})"
        )
    _check_offpolicy(cfg)
    _check_keys(cfg)
    _check_trainer(cfg)
    _check_exploration(cfg)
    for m in cfg.train.lr_milestones:
        if not isinstance(m, int) or m <= 0:
            raise ConfigError(
                f"train.lr_milestones must be positive step numbers (got {list(cfg.train.lr_milestones)})"
            )
    from sampler.training.memory import check_memory  # noqa: PLC0415 - memory.py imports this module

    check_memory(cfg)  # last: the sizes it reads are checked above


def _check_no_nan(cfg: DictConfig) -> None:
    """NaN is never a meaningful setting (a comparison with it is always False, so it would slip through every range
    check below): one line naming the first key that holds it."""

    def walk(node, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{key}[{i}]")
        elif isinstance(node, float) and math.isnan(node):
            raise ConfigError(f"{key}=nan: NaN is never a meaningful setting; give a number")

    walk(OmegaConf.to_container(cfg, resolve=False), "")


def _check_offpolicy(cfg: DictConfig) -> None:
    _choice("buffer.name", cfg.buffer.name, BUFFER_NAMES)
    _choice("local_search.name", cfg.local_search.name, LOCAL_SEARCHES)
    if cfg.buffer.name != "none":
        _positive(cfg, "buffer.capacity")
    if cfg.local_search.name != "none":
        _positive(cfg, "local_search.n_steps", "local_search.every", "local_search.capacity")
        _positive(cfg, "local_search.step_size", integer=False)
    source = cfg.train.backward_source
    uses_backward = cfg.train.phases in ("backward", "both_ways") or cfg.teacher.name != "none"
    if uses_backward and source in ("buffer", "local_search"):
        if cfg.buffer.name == "none":
            raise ConfigError(
                f"train.backward_source={source} needs a replay buffer; choose buffer=uniform|reward|rank|per"
            )
        if cfg.train.phases == "backward" and cfg.teacher.name == "none":
            raise ConfigError(f"train.backward_source={source} is filled by forward steps; use train.phases=both_ways")
        if source == "local_search" and cfg.local_search.name == "none":
            raise ConfigError("train.backward_source=local_search needs local_search=mala")
    _choice("teacher.name", cfg.teacher.name, ("none", "adaptive"))
    if cfg.teacher.name == "adaptive":
        if loss_name(cfg.loss.name) not in ("tb", "vargrad") or cfg.model.flow != "scalar":
            raise ConfigError(
                f"teacher=adaptive trains a TB student; use loss=tb with model.flow=scalar "
                f"(got loss={cfg.loss.name}, model.flow={cfg.model.flow})"
            )
        if cfg.buffer.name not in ("per", "rank"):
            raise ConfigError(
                f"teacher=adaptive replays a buffer ranked by the teacher reward; use buffer=per "
                f"(got buffer={cfg.buffer.name})"
            )
        if cfg.train.backward_source != "buffer":
            raise ConfigError("teacher=adaptive replays its buffer; set train.backward_source=buffer")
        _positive(cfg, "teacher.lr_multiplier", "teacher.weight", "teacher.eps", integer=False)
    if cfg.buffer.name == "per" and cfg.model.flow == "forward_looking":
        raise ConfigError(
            "buffer=per keys samples by the student's TB error; it needs model.flow=scalar or conditional"
        )


@cache
def _yaml_keys(relative: str, section: str | None = None) -> frozenset[str] | None:
    path = CONF_DIR / relative
    if not path.is_file():
        return None
    node = OmegaConf.load(path)
    node = node.get(section) if section is not None else node
    return frozenset(k for k in node if k != "defaults") if isinstance(node, DictConfig) else None


def _check_keys(cfg: DictConfig) -> None:
    """A key added with ``+`` (``+train.bach_size=3``) that nothing reads: one line, not a silently ignored value."""
    for section in (*ROOT_SECTIONS, *GROUP_SECTIONS):
        node = cfg.get(section)
        if not isinstance(node, DictConfig):
            continue
        if section in ROOT_SECTIONS:
            known = _yaml_keys("config.yaml", section)
        else:
            known = _yaml_keys(f"{section}/{node.get('name')}.yaml")
        if known is None:
            continue
        unknown = sorted(set(node) - known)
        if unknown:
            where = section if section in ROOT_SECTIONS else f"{section}={node.get('name')}"
            raise ConfigError(
                f"{section}.{unknown[0]} is not a key of {where} (nothing would read it); "
                f"its keys: {', '.join(sorted(known))}"
            )


def _check_trainer(cfg: DictConfig) -> None:
    """``trainer.*``: Lightning ``Trainer`` arguments only, a GPU accelerator only where CUDA is visible, one
    device on one node, and float32 precision."""
    import lightning as L

    allowed = set(inspect.signature(L.Trainer.__init__).parameters) | set(RUN_TRAINER_KEYS)
    unknown = sorted(set(cfg.trainer) - allowed)
    if unknown:
        raise ConfigError(f"trainer.{unknown[0]} is not a Lightning Trainer argument")
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} needs a CUDA GPU and torch sees none here "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False); use trainer=default on this machine"
        )
    precision = cfg.trainer.get("precision", "32-true")
    if str(precision) not in PRECISIONS:
        raise ConfigError(
            f"trainer.precision={precision} is not supported: the sampler computes in float32 (mixed, 16- and 64-bit "
            f"precision break its kernels and buffers); choose one of: {', '.join(PRECISIONS)}"
        )
    devices = cfg.trainer.get("devices", "auto")
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    count = _device_count(devices, on_gpu)
    shown = list(devices) if isinstance(devices, ListConfig) else devices
    if count is None or count < 1:
        raise ConfigError(f"trainer.devices={shown} selects no device here; use trainer.devices=1")
    if count > 1:
        raise ConfigError(f"trainer.devices={shown} selects {count} devices, but {ONE_DEVICE_HINT}")
    num_nodes = cfg.trainer.get("num_nodes", 1)
    if num_nodes != 1 or isinstance(num_nodes, bool):
        raise ConfigError(f"trainer.num_nodes={num_nodes}: {ONE_DEVICE_HINT}")
    strategy = cfg.trainer.get("strategy", "auto")
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"trainer.strategy={strategy} is not supported ({', '.join(STRATEGIES)} are): {ONE_DEVICE_HINT}"
        )


def _device_count(devices, on_gpu: bool) -> int | None:
    """How many devices Lightning would train on for ``trainer.devices=devices`` (None: a value it rejects)."""
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, bool):
        return None
    if not on_gpu:  # the CPU accelerator takes a positive count or "auto" (= 1)
        return 1 if devices == "auto" else devices if isinstance(devices, int) and devices > 0 else None
    if devices == "auto" or devices == -1:
        return torch.cuda.device_count()
    if isinstance(devices, int):
        return devices if devices > 0 else None
    if isinstance(devices, ListConfig | list):
        return len(devices)
    if isinstance(devices, str):  # "0,1": GPU indices
        return len([i for i in devices.split(",") if i.strip()])
    return None


def _check_exploration(cfg: DictConfig) -> None:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        instantiate(cfg.exploration)
    except InstantiationException as err:
        raise ConfigError(f"exploration could not be built: {one_line(innermost(err))}") from err

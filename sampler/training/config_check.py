"""Fail fast on a bad configuration, before anything is built: one line naming the key and what is allowed.

Unknown group options (``energy=gmm26``) and misspelt keys (``model.hidden_dimm=3``) fail when the config is
composed (``sampler.app.composition`` turns Hydra's message into one line); this module checks the values: no NaN
anywhere, enumerations, finite positive sizes and rates, which objectives work with which flows and training
phases, and Lightning ``Trainer`` settings the sampler can train under (one device, float32).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from sampler.gfn.diffusion import FLOWS
from sampler.losses import ALIASES, LOSSES
from sampler.recipe import BACKWARD_SOURCES, PHASES

ARCHS = ("pis", "mlp")

#: The keys of the root sections nothing reads as keyword arguments (conf/config.yaml): a key added with ``+`` that
#: they do not define would be ignored.
ROOT_KEYS = {
    "train": (
        "batch_size",
        "lr_policy",
        "lr_flow",
        "lr_back",
        "weight_decay",
        "grad_clip",
        "lr_milestones",
        "lr_gamma",
        "phases",
        "backward_loss",
        "backward_source",
    ),
    "eval": ("every", "K", "plots"),
    "checkpoint": ("every", "resume", "continue_unfinished"),
}
#: ``_target_`` groups the module builds, with the arguments it passes at run time (not set in the config).
RUNTIME_ARGS = {"buffer": ("dim",), "local_search": (), "teacher": ("gfn",), "intrinsic": ("gfn",)}
#: Hydra's own keys of an instantiated node.
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")
#: ``trainer.*`` keys the run itself reads (the rest are Lightning ``Trainer`` arguments).
RUN_TRAINER_KEYS = ("max_steps", "log_every_n_steps", "progress_every")
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


def _target_class(node) -> type | None:
    """The class ``node._target_`` names, or ``None`` when there is none or it cannot be imported (building it
    reports that, with the reason)."""
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if target is None:
        return None
    from hydra.utils import get_class

    try:
        return get_class(str(target))
    except Exception:  # noqa: BLE001 - reported when the object is built
        return None


def is_discrete_config(cfg: DictConfig) -> bool:
    """Whether ``cfg.energy`` selects a discrete target (``discrete = True`` on its class: docs/discrete.md)."""
    cls = _target_class(cfg.get("energy"))
    return bool(getattr(cls, "discrete", False))


def _is_discrete_model(cfg: DictConfig) -> bool:
    from sampler.discrete.gfn import DiscreteGFN

    cls = _target_class(cfg.get("model"))
    return cls is not None and issubclass(cls, DiscreteGFN)


#: Objectives of discrete trajectories (the shared implementations in sampler.losses).
DISCRETE_LOSSES = ("tb", "vargrad", "db", "subtb")


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` on the first value that cannot work."""
    if is_discrete_config(cfg):
        check_discrete_config(cfg)
        return
    _check_no_nan(cfg)
    if _is_discrete_model(cfg):
        raise ConfigError(
            f"model._target_={cfg.model._target_} samples discrete targets, but energy._target_={cfg.energy._target_} "
            "is continuous; leave model to the energy's default (model=lp, pis, ...)"
        )
    if cfg.get("intrinsic") and cfg.intrinsic.get("_target_") is not None:
        raise ConfigError(
            f"intrinsic._target_={cfg.intrinsic._target_} augments discrete trajectories, but "
            f"energy._target_={cfg.energy._target_} is continuous; use intrinsic=none"
        )
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
    if cfg.model.get("t_scale") is not None:  # null: the energy's declared σ² (checked with the energy)
        _positive(cfg, "model.t_scale", integer=False)
    _positive(cfg, "train.lr_policy", "train.lr_back", "loss.lam", integer=False)
    if cfg.train.get("lr_flow") is not None:  # null: the objective's flow lr (sampler.losses.flow_lr)
        _positive(cfg, "train.lr_flow", integer=False)
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
    _check_common(cfg)
    from sampler.training.memory import check_memory  # noqa: PLC0415 - memory.py imports this module

    check_memory(cfg)  # last: the sizes it reads are checked above


def check_discrete_config(cfg: DictConfig) -> None:
    """:func:`check_config` for a discrete target (docs/discrete.md): the discrete GFN, its objectives and off-policy
    options, sizes and rates; the target is built here, so that a grid too large to enumerate or a reward that is not
    positive stops the run before anything is written."""
    _check_no_nan(cfg)
    energy = f"energy._target_={cfg.energy._target_}"
    if not _is_discrete_model(cfg):
        raise ConfigError(
            f"{energy} is a discrete target, but model._target_={cfg.model.get('_target_')} samples continuous ones; "
            "drop the model= override (a discrete target selects model=discrete)"
        )
    all_losses = list(LOSSES) + list(ALIASES)
    _choice("loss.name", cfg.loss.name, all_losses)
    for key, name in (("loss.name", cfg.loss.name), ("train.backward_loss", cfg.train.backward_loss)):
        if loss_name(name) not in DISCRETE_LOSSES:
            raise ConfigError(
                f"{key}={name} is an objective of continuous targets; with {energy} choose one of: "
                f"{', '.join(DISCRETE_LOSSES)}"
            )
    from sampler.discrete.gfn import BACKWARD_POLICIES
    from sampler.discrete.gfn import FLOWS as DISCRETE_FLOWS

    _choice("model.flow", cfg.model.flow, DISCRETE_FLOWS)
    _choice("model.pb", cfg.model.get("pb", "uniform"), BACKWARD_POLICIES)
    _choice("train.phases", cfg.train.phases, PHASES)
    _choice("train.backward_source", cfg.train.backward_source, BACKWARD_SOURCES)
    if cfg.get("seed") is None or not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError(f"seed must be a non-negative integer (got {cfg.get('seed')!r})")
    _positive(
        cfg, "trainer.max_steps", "train.batch_size", "model.hidden_dim", "model.num_layers", "eval.every", "eval.K",
        "checkpoint.every",
    )  # fmt: skip
    _positive(cfg, "train.lr_policy", "train.lr_back", "loss.lam", "model.temperature", integer=False)
    if cfg.train.get("lr_flow") is not None:
        _positive(cfg, "train.lr_flow", integer=False)
    _positive(cfg, "train.weight_decay", integer=False, allow_zero=True)
    if cfg.train.grad_clip is not None:
        _positive(cfg, "train.grad_clip", integer=False)
    if cfg.eval.K < 2:
        raise ConfigError(f"eval.K must be at least 2 (got {cfg.eval.K})")
    for name in ("loss.name", "train.backward_loss"):
        objective = loss_name(OmegaConf.select(cfg, name))
        if cfg.model.flow not in LOSSES[objective].flows:
            flows = ", ".join(f for f in LOSSES[objective].flows if f in DISCRETE_FLOWS)
            raise ConfigError(f"{name}={objective} needs model.flow in {{{flows}}} (got {cfg.model.flow})")
    from sampler.discrete.local_search import BackAndForthSearch

    search = _target_class(cfg.get("local_search"))
    if search is not None and not issubclass(search, BackAndForthSearch):
        raise ConfigError(
            f"local_search._target_={cfg.local_search._target_} moves continuous states; with {energy} use "
            "local_search=back_and_forth"
        )
    _check_offpolicy(cfg)
    _group_class(cfg, "intrinsic")
    _check_common(cfg)
    from sampler.training.module import build_energy  # noqa: PLC0415 - module imports this file

    env = build_energy(cfg)  # bad ndim/height/R0, a grid too large to enumerate, a non-positive reward: one line
    uses_exact = cfg.teacher.get("_target_") is None and cfg.train.phases != "forward"
    if uses_exact and cfg.train.backward_source == "exact" and not env.has_sampler:
        raise ConfigError(
            f"train.backward_source=exact needs the target enumerated, but {energy} has energy.exact=false; "
            "use train.backward_source=buffer"
        )


def _check_common(cfg: DictConfig) -> None:
    """The checks of continuous and discrete targets alike: stray keys, trainer, exploration, lr milestones."""
    _check_keys(cfg)
    _check_trainer(cfg)
    _check_exploration(cfg)
    for m in cfg.train.lr_milestones:
        if not isinstance(m, int) or m <= 0:
            raise ConfigError(
                f"train.lr_milestones must be positive step numbers (got {list(cfg.train.lr_milestones)})"
            )


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


def _group_class(cfg: DictConfig, group: str, base: type | None = None) -> type | None:
    """The class a ``_target_`` group selects (``None`` for an option without one, ``buffer=none``), after checking
    that it is a ``base`` and that the group's keys are arguments of it: one line for a misspelt or stray key
    (nothing would read it)."""
    node = cfg.get(group)
    if node is None:
        return None
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{group} must be a config group option ({group}=none, ...), not {node!r}")
    target = node.get("_target_")
    keys = [k for k in node if k not in HYDRA_KEYS]
    if target is None:
        if keys:
            raise ConfigError(f"{group}.{keys[0]} is not a key of {group}=none (nothing would read it)")
        return None
    from hydra.utils import get_class

    try:
        cls = get_class(str(target))
    except Exception as err:  # noqa: BLE001 - an import error inside the module is also "cannot be found"
        raise ConfigError(f"{group}._target_={target} could not be found: {root_cause(err)}") from err
    if base is not None and not issubclass(cls, base):
        raise ConfigError(f"{group}._target_={target} is not a {base.__module__}.{base.__name__} subclass")
    params = inspect.signature(cls).parameters
    runtime = RUNTIME_ARGS.get(group, ())
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    known = [n for n, p in params.items() if n not in runtime and p.kind not in _VARIADIC]
    for key in keys:
        if key in runtime:
            raise ConfigError(f"{group}.{key} is set at run time; remove it from the config")
        if key not in known and not takes_any:
            raise ConfigError(
                f"{group}.{key} is not a key of {group} (_target_={target}; nothing would read it); "
                f"its keys: {', '.join(known)}"
            )
    missing = [
        n
        for n, p in params.items()
        if p.default is inspect.Parameter.empty and p.kind not in _VARIADIC
        if n not in runtime and n not in node
    ]
    if missing:
        raise ConfigError(f"{group}.{missing[0]} is required by {group}._target_={target}; set it")
    partial = bool(node.get("_partial_", False))
    if runtime and not partial:
        raise ConfigError(
            f"{group}._target_={target} gets {', '.join(runtime)} at run time: set {group}._partial_=true"
        )
    return cls


_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def _check_offpolicy(cfg: DictConfig) -> None:
    from sampler.buffers import RankBuffer, ReplayBuffer
    from sampler.local_search import LocalSearch

    buffer = _group_class(cfg, "buffer", ReplayBuffer)
    local_search = _group_class(cfg, "local_search", LocalSearch)
    teacher = _group_class(cfg, "teacher")
    if buffer is not None and "capacity" in cfg.buffer:
        _positive(cfg, "buffer.capacity")
    if local_search is not None:
        ls = cfg.local_search
        _positive(cfg, *(f"local_search.{k}" for k in ("n_steps", "every", "capacity") if k in ls))
        _positive(cfg, *(f"local_search.{k}" for k in ("step_size",) if k in ls), integer=False)
    source = cfg.train.backward_source
    uses_backward = cfg.train.phases in ("backward", "both_ways") or teacher is not None
    if uses_backward and source in ("buffer", "local_search"):
        if buffer is None:
            raise ConfigError(f"train.backward_source={source} needs a replay buffer; choose one, e.g. buffer=rank")
        if cfg.train.phases == "backward" and teacher is None:
            raise ConfigError(f"train.backward_source={source} is filled by forward steps; use train.phases=both_ways")
        if source == "local_search" and local_search is None:
            raise ConfigError("train.backward_source=local_search needs local_search=mala (or another local search)")
    if teacher is not None:
        what = f"the teacher (teacher._target_={cfg.teacher._target_})"
        if loss_name(cfg.loss.name) not in ("tb", "vargrad") or cfg.model.flow != "scalar":
            raise ConfigError(
                f"{what} trains a TB student; use loss=tb with model.flow=scalar "
                f"(got loss={cfg.loss.name}, model.flow={cfg.model.flow})"
            )
        if buffer is None or not issubclass(buffer, RankBuffer):
            got = "none" if buffer is None else f"_target_={cfg.buffer._target_}"
            raise ConfigError(
                f"{what} replays a buffer ranked by the teacher reward; use buffer=per (got buffer {got})"
            )
        if cfg.train.backward_source != "buffer":
            raise ConfigError(f"{what} replays its buffer; set train.backward_source=buffer")
        _positive(cfg, *(f"teacher.{k}" for k in ("lr_multiplier", "weight", "eps") if k in cfg.teacher), integer=False)
    if buffer is not None and buffer.keyed_by == "teacher_reward" and cfg.model.flow == "forward_looking":
        raise ConfigError(
            f"buffer._target_={cfg.buffer._target_} keys samples by the student's TB error; "
            "it needs model.flow=scalar or conditional"
        )


def _check_keys(cfg: DictConfig) -> None:
    """A key added with ``+`` (``+train.bach_size=3``) that nothing reads: one line, not a silently ignored value."""
    for section, known in ROOT_KEYS.items():
        node = cfg.get(section)
        if not isinstance(node, DictConfig):
            continue
        unknown = sorted(set(node) - set(known))
        if unknown:
            raise ConfigError(
                f"{section}.{unknown[0]} is not a key of {section} (nothing would read it); "
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

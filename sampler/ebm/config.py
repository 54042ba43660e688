"""The config of ``task=ebm`` runs (``conf/task/ebm.yaml``): its checks, and building the data set and the energy
network it names.

:func:`check_ebm_config` runs before anything is written: one :class:`ConfigError` line on the first value that
cannot work, then the null defaults written into the config as values (so the saved config says what the run used):

* ``model.t_scale: null`` → 1.0 (σ² of the GFN negative sampler's reference process: E_θ declares none);
* ``train.lr_flow: null`` → the objective's flow lr (as for samplers);
* ``ebm.generate.method: null`` → ``buffer`` with PCD, ``gfn`` with GFN negatives, ``annealed`` with CD.

The sampler groups (``model``, ``loss``, ``exploration``, ``buffer``, ``local_search``) and ``train.*`` configure
the GFN of ``ebm.negatives=gfn``; in every EBM run (they are part of its config) they pass the sampler's own checks
(:func:`sampler.training.config_check.check_config`) with E_θ on the data's dimension as their target. ``energy``
has no meaning here (``conf/task/ebm.yaml`` drops it): given on the command line it is an error.
"""

from __future__ import annotations

import inspect
import math

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from sampler.training.config_check import ConfigError, check_config, root_cause

NEGATIVES = ("langevin", "gfn")
LR_SCHEDULES = ("constant", "cosine")
#: How evaluation (and ``scripts/sample.py``) generates: Langevin from noise, from the PCD buffer, annealed, or
#: the GFN negative sampler's rollouts.
GENERATE_METHODS = ("noise", "buffer", "annealed", "gfn")
#: The keys of ``ebm`` and of its sections (a key added with ``+`` that nothing reads is an error).
EBM_KEYS = {
    "": tuple("negatives alpha lr lr_schedule weight_decay grad_clip langevin buffer gfn generate monitor net".split()),
    "langevin": ("n_steps", "step_size", "noise_scale", "grad_clip", "metropolis", "persistent"),
    "buffer": ("capacity", "reinit_prob", "data_reinit"),
    "gfn": ("steps_per_ebm_step",),
    "generate": ("method", "n_steps", "step_size", "noise_scale", "t_start"),
    "monitor": ("every", "energy_limit"),
}
#: The GFN's σ² when ``model.t_scale`` is null.
DEFAULT_GFN_T_SCALE = 1.0
#: The diffusion GFN class ``model`` must build for GFN negatives.
DIFFUSION_GFN = "sampler.gfn.DiffusionGFN"


def check_ebm_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` on the first value of a ``task=ebm`` config that cannot work, then record the null
    defaults as values (see the module docstring).

    Args:
        cfg: the composed run config (``conf/config.yaml`` with ``task=ebm``); modified in place.

    Raises:
        ConfigError: one line naming the key (or the data file) and what to do.
    """
    if cfg.get("energy") is not None:
        target = cfg.energy.get("_target_", "?") if isinstance(cfg.energy, DictConfig) else cfg.energy
        raise ConfigError(
            f"energy (_target_={target}) does not apply to task=ebm: the energy E_θ is learned from the data "
            "(data=...), and it is the target of the GFN negative sampler; remove energy=..."
        )
    if not isinstance(cfg.get("ebm"), DictConfig):
        raise ConfigError("task=ebm needs the ebm section of conf/task/ebm.yaml (compose with task=ebm)")
    e = cfg.ebm
    _check_keys(e)
    _choice("ebm.negatives", e.negatives, NEGATIVES)
    _choice("ebm.lr_schedule", e.lr_schedule, LR_SCHEDULES)
    _number(e, "alpha", minimum=0.0)
    _number(e, "lr", minimum=0.0, strict=True)
    _number(e, "weight_decay", minimum=0.0)
    _number(e, "grad_clip", minimum=0.0, strict=True, nullable=True)
    lg = e.langevin
    _integer(lg, "n_steps", "ebm.langevin")
    _number(lg, "step_size", minimum=0.0, strict=True, where="ebm.langevin")
    _number(lg, "noise_scale", minimum=0.0, where="ebm.langevin")
    _number(lg, "grad_clip", minimum=0.0, strict=True, nullable=True, where="ebm.langevin")
    _boolean(lg, "metropolis", "ebm.langevin")
    _boolean(lg, "persistent", "ebm.langevin")
    _integer(e.buffer, "capacity", "ebm.buffer")
    _number(e.buffer, "reinit_prob", minimum=0.0, maximum=1.0, where="ebm.buffer")
    _number(e.buffer, "data_reinit", minimum=0.0, maximum=1.0, where="ebm.buffer")
    _integer(e.gfn, "steps_per_ebm_step", "ebm.gfn")
    g = e.generate
    _integer(g, "n_steps", "ebm.generate")
    _number(g, "step_size", minimum=0.0, strict=True, where="ebm.generate")
    _number(g, "noise_scale", minimum=0.0, where="ebm.generate")
    _number(g, "t_start", minimum=0.0, strict=True, where="ebm.generate")
    _integer(e.monitor, "every", "ebm.monitor")
    _number(e.monitor, "energy_limit", minimum=0.0, strict=True, where="ebm.monitor")
    if cfg.train.get("lr_milestones"):
        raise ConfigError(
            f"train.lr_milestones={list(cfg.train.lr_milestones)} is not read by task=ebm (E_θ's lr follows "
            "ebm.lr_schedule; the GFN negative sampler's is constant); remove it"
        )
    batch = cfg.train.batch_size
    pcd = e.negatives == "langevin" and lg.persistent
    if pcd and isinstance(batch, int) and e.buffer.capacity < batch:
        raise ConfigError(
            f"ebm.buffer.capacity={e.buffer.capacity} holds fewer chains than a batch draws "
            f"(train.batch_size={batch}); raise it to at least {batch}"
        )
    method = g.method if g.method is not None else default_method(cfg)
    if why := _method_problem(cfg, method):
        raise ConfigError(f"ebm.generate.method={method} {why}")
    data = build_data(cfg)
    build_net(cfg, data)
    _check_gfn(cfg)
    _check_sampler_parts(cfg, data.dim)
    with open_dict(cfg):
        g.method = method
        if cfg.model.get("t_scale") is None:
            cfg.model.t_scale = DEFAULT_GFN_T_SCALE
        if cfg.train.get("lr_flow") is None:
            from sampler.losses import flow_lr  # noqa: PLC0415

            cfg.train.lr_flow = flow_lr(cfg.loss.name)


def default_method(cfg: DictConfig) -> str:
    """How a run generates when ``ebm.generate.method`` is null: from the PCD buffer, by the GFN, or annealed
    Langevin from noise (CD keeps no chains)."""
    e = cfg.ebm
    if e.negatives == "gfn":
        return "gfn"
    return "buffer" if e.langevin.persistent else "annealed"


# ---------------------------------------------------------------------------------------------------- building
def build_data(cfg: DictConfig):
    """The data set of ``cfg.data`` (an :class:`~sampler.ebm.data.EBMData` or an object with its attributes).

    Raises:
        ConfigError: no data, a required key unset (``data.path`` of ``data=array``), a data set that cannot be
            built (its message: a missing file, an array of the wrong shape), or an object without what the EBM
            reads.
    """
    from sampler.ebm.data import check_data  # noqa: PLC0415

    node = cfg.get("data")
    if isinstance(node, DictConfig) and OmegaConf.is_missing(node, "_target_"):
        raise ConfigError("data=custom needs data._target_=my.module.MyData (a sampler.ebm.data.EBMData subclass, "
                          "or a class whose objects have train, test, dim and bounds)")  # fmt: skip
    if not isinstance(node, DictConfig) or node.get("_target_") is None:
        raise ConfigError("task=ebm needs a data set: data=moons (or 8gaussians rings ... digits array), or "
                          "data._target_=my.module.MyData")  # fmt: skip
    target = node._target_
    for key in node:
        if OmegaConf.is_missing(node, key):
            raise ConfigError(f"data.{key} is required by data._target_={target}; set data.{key}=...")
    try:
        data = instantiate(node)
    except InstantiationException as err:
        raise ConfigError(f"data._target_={target} could not be built: {_message(err)}") from err
    try:
        check_data(data)
    except ValueError as err:
        raise ConfigError(f"data._target_={target}: {err}") from err
    return data


def build_net(cfg: DictConfig, data):
    """The energy network of ``cfg.ebm.net`` for ``data``: the option's partial called with the data's ``dim``
    (vectors) or ``image_shape`` (images), whichever the class takes.

    Raises:
        ConfigError: a network that needs image data on vectors, or one that cannot be built.
    """
    node = cfg.ebm.get("net")
    if not isinstance(node, DictConfig) or node.get("_target_") is None:
        raise ConfigError("ebm.net must be an energy network option: ebm/net=mlp or ebm/net=cnn")
    target = node._target_
    try:
        factory = instantiate(node, _partial_=True)
        params = inspect.signature(factory.func).parameters
    except (InstantiationException, TypeError, ValueError) as err:
        raise ConfigError(f"ebm.net._target_={target} could not be built: {_message(err)}") from err
    runtime = {}
    image_shape = getattr(data, "image_shape", None)
    if "image_shape" in params:
        if image_shape is None and "dim" not in params:
            raise ConfigError(
                f"ebm.net._target_={target} takes images, and data={data.name} holds {data.dim}-D points without "
                "an image_shape; use ebm/net=mlp (or data=digits)"
            )
        if image_shape is not None:
            runtime["image_shape"] = tuple(image_shape)
    if "dim" in params and "image_shape" not in runtime:
        runtime["dim"] = int(data.dim)
    try:
        net = factory(**runtime)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"ebm.net._target_={target} could not be built: {_message(err)}") from err
    return net


# ------------------------------------------------------------------------------------------------------ checks
def _check_gfn(cfg: DictConfig) -> None:
    """What the GFN negative sampler cannot take: another model than the diffusion GFN, a teacher, backward steps
    from exact samples (E_θ has none)."""
    if cfg.ebm.negatives != "gfn":
        return
    target = cfg.model.get("_target_")
    if not _is_subclass(target, DIFFUSION_GFN):
        raise ConfigError(
            f"ebm.negatives=gfn trains a diffusion GFN on −E_θ; model._target_={target} is not one "
            "(use model=lp, pis or mlp)"
        )
    if cfg.get("teacher") is not None and cfg.teacher.get("_target_") is not None:
        raise ConfigError(
            f"ebm.negatives=gfn cannot train with a teacher (teacher._target_={cfg.teacher._target_}); use teacher=none"
        )
    if cfg.train.phases != "forward" and cfg.train.backward_source == "exact":
        raise ConfigError(
            f"train.phases={cfg.train.phases} with train.backward_source=exact needs exact samples of the target, "
            "and the learned E_θ has none: use train.backward_source=buffer (with buffer=rank) or local_search, "
            "or train.phases=forward"
        )


def _check_sampler_parts(cfg: DictConfig, dim: int) -> None:
    """The sampler's checks of the shared sections (trainer, train, eval, checkpoint, NaNs) and of the GFN groups,
    with E_θ on the data's dimension standing in for the ``energy`` group (what the GFN negative sampler targets;
    the memory estimate reads only its dimension)."""
    view = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(view):
        view.energy = {"_target_": "sampler.ebm.nets.EBMEnergy", "dim": int(dim)}
        for key in ("task", "data", "ebm"):
            view.pop(key, None)
    check_config(view)


def _check_keys(e: DictConfig) -> None:
    for section, known in EBM_KEYS.items():
        node = e if not section else e.get(section)
        where = "ebm" if not section else f"ebm.{section}"
        if not isinstance(node, DictConfig):
            raise ConfigError(f"{where} must be a section with keys {', '.join(known)} (got {node!r})")
        unknown = sorted(set(node) - set(known))
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]} is not a key of {where} (nothing would read it); "
                              f"its keys: {', '.join(known)}")  # fmt: skip


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value} is not an option; choose one of: {', '.join(allowed)}")


def _number(node: DictConfig, key: str, *, minimum: float | None = None, maximum: float | None = None,
            strict: bool = False, nullable: bool = False, where: str = "ebm") -> None:  # fmt: skip
    """``node[key]`` a finite number ≥ ``minimum`` (> with ``strict``) and ≤ ``maximum`` (or null if ``nullable``)."""
    value = node.get(key)
    if value is None and nullable:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        if minimum is not None and maximum is not None:
            what = f"a number in [{minimum:g}, {maximum:g}]"
        elif minimum is not None:
            what = f"a finite number {'>' if strict else '≥'} {minimum:g}"
        else:
            what = "a finite number"
        raise ConfigError(f"{where}.{key} must be {what}{' or null' if nullable else ''} (got {value!r})")


def _integer(node: DictConfig, key: str, where: str) -> None:
    value = node.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{where}.{key} must be an integer ≥ 1 (got {value!r})")


def _boolean(node: DictConfig, key: str, where: str) -> None:
    value = node.get(key)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be true or false (got {value!r})")


def _is_subclass(target, base: str) -> bool:
    from hydra._internal.utils import _locate  # noqa: PLC0415

    try:
        cls, parent = _locate(str(target)), _locate(base)
    except Exception:  # noqa: BLE001 - a name that cannot be found is not the class
        return False
    return inspect.isclass(cls) and issubclass(cls, parent)


def _message(err: BaseException) -> str:
    """The innermost error's own message for a data set or network (``Type: message`` for anything else)."""
    cause = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, ValueError):
        return " ".join(str(cause).split())
    return root_cause(err)


# ------------------------------------------------------------------------------------------------------ memory
#: Floats per chain and dimension a Langevin step holds at once (state, proposal, noise, two gradients, drift and the
#: network's input copies), rounded up.
CHAIN_FLOATS = 16


def check_sampling_memory(cfg: DictConfig, n: int, batch: int) -> int:
    """Raise :class:`ConfigError` (one line naming ``n`` or ``batch``) when ``n`` samples of the EBM of ``cfg``,
    generated ``batch`` chains at a time and gathered in host memory, do not fit here.

    Args:
        cfg: the run config (``task: ebm``).
        n: samples to generate.
        batch: chains per call.

    Returns:
        The estimated bytes.
    """
    from sampler.training.memory import FLOAT, RUNTIME_BYTES, Term, available_bytes, memory_error  # noqa: PLC0415

    d = int(build_data(cfg).dim)
    rows = min(int(batch), int(n))
    terms = [
        Term("samples", int(n) * d * FLOAT, (("n", int(n)), ("data dim", d)), host=True),
        Term("one batch's chains", rows * d * FLOAT * CHAIN_FLOATS, (("batch", rows), ("data dim", d))),
    ]
    need = RUNTIME_BYTES + sum(t.bytes for t in terms)
    free = available_bytes("cpu")
    if free is not None and need > free:
        raise ConfigError(memory_error(need, free, terms))
    return need


def check_ebm_method(cfg: DictConfig, method: str | None) -> None:
    """Raise :class:`ConfigError` (one line) when the EBM run of ``cfg`` cannot generate with ``method`` (``None``:
    its ``ebm.generate.method``): an unknown method, ``buffer`` without PCD chains, ``gfn`` without a GFN."""
    if method is not None and (why := _method_problem(cfg, method)):
        raise ConfigError(f"method={method} {why}")


def _method_problem(cfg: DictConfig, method: str) -> str | None:
    """Why the EBM of ``cfg`` cannot generate with ``method`` (the end of a sentence), or ``None``."""
    e = cfg.ebm
    if method not in GENERATE_METHODS:
        return f"is not a generation method; choose one of: {', '.join(GENERATE_METHODS)}"
    if method == "gfn" and e.negatives != "gfn":
        return "samples the GFN negative sampler: it needs ebm.negatives=gfn; choose noise, buffer or annealed"
    if method == "buffer" and not (e.negatives == "langevin" and e.langevin.persistent):
        return (
            "continues the PCD chains: it needs ebm.negatives=langevin with ebm.langevin.persistent=true; "
            "choose noise or annealed"
        )
    return None

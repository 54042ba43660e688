"""How much memory a configuration needs, and a check that it fits here — before anything large is allocated.

A size that cannot fit (``model.T=100000``, ``train.batch_size=100000000``, ``eval.K=100000000``) would otherwise
end in the out-of-memory killer with no message, or in a traceback after the first training steps. The estimate
models the terms that grow with the configured sizes (B = ``train.batch_size``, T = ``model.T``, H =
``model.hidden_dim``, L = ``model.num_layers``, d = the energy's dimension, K = ``eval.K``), in float32 unless
stated:

* parameters and Adam's two moments (3 × the network sizes: policy, flow, P_B, Langevin and teacher networks),
  and their gradients (once, plus one accumulator per thread in the native backward pass);
* the recorded activations of a training rollout: every GELU's input and output at every step,
  ``2·(L+1)·T·B·H`` per network that is trained on sampled states (policy; flow network for conditional and
  forward-looking flows; learned P_B; the adaptive teacher's policy), kept for reuse between steps;
* the training trajectories: states ``[B, T+1, d]``, log-densities ``[B, T]``, the policy head and its backward
  pass, ∇log r at every state for the Langevin parametrisation and log r at every state for forward-looking flows;
* replay and local-search buffers (``capacity × d`` states, keys, ids and sampling weights), and the chains of a
  local-search call ``(n_steps − burn_in) × B × d``;
* an evaluation with K samples: the forward and backward rollouts ``K·(T+1)·d``, the exact W2's K×K float64 cost
  matrix and transport plan with the network simplex's arc arrays (41–42 bytes per pair measured; 44 used), and
  the MMD's three K×K float64 distance matrices with their indices and pooled copies (72–84 measured; 86 used);
* the Python process with torch, Lightning and the native kernels loaded (~0.5 GiB, measured).

On a GPU the tensors live on the device and the W2/MMD matrices (computed with POT and torch on the CPU) in host
memory; each side is checked against its own free memory.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from sampler.gfn.diffusion import _engine_mode
from sampler.training.config_check import ConfigError
from sampler.training.trust import is_platform_class

FLOAT = 4  # bytes of a float32
GiB = 2**30
#: The process itself (Python, torch, Lightning, Hydra, matplotlib, native kernels): ~470 MiB measured on CPU.
RUNTIME_BYTES = 512 * 2**20
#: On a GPU: host memory of the CUDA libraries, and the device's own workspaces.
CUDA_HOST_RUNTIME_BYTES = 2 * GiB
CUDA_DEVICE_RUNTIME_BYTES = 256 * 2**20
#: Peak bytes per (sample, sample) pair, measured for K = 1000 to 6000: exact W2 (ot.dist + ot.emd2; 41–42) and
#: mmd_rbf (72–84, the most at small K).
W2_BYTES_PER_PAIR = 44
MMD_BYTES_PER_PAIR = 86
#: Typical values: the key of the dominant term that is furthest above its typical value is the one to reduce.
TYPICAL = {
    "train.batch_size": 300,
    "model.T": 100,
    "model.hidden_dim": 64,
    "model.num_layers": 2,
    "eval.K": 2000,
    "buffer.capacity": 600_000,
    "local_search.capacity": 600_000,
    "energy.dim": 32,
    "local_search.n_steps": 100,
}
_UNLIMITED = 2**60  # cgroup v1 reports "no limit" as a number near 2^63


def _engine(m) -> str:
    """The engine ``model`` resolves to, as far as memory goes: ``auto``/``native`` (kernels), ``fused`` or
    ``reference`` (a network the accelerated engines do not implement runs there); older configs say ``native``."""
    if m.get("activation", "gelu") != "gelu" or m.get("layer_norm", False) or m.get("policy") is not None:
        return "reference"
    try:
        return _engine_mode(m.get("engine", "auto"), m.get("native"))
    except ValueError:  # an unknown value: the model's construction reports it
        return "auto"


@dataclass
class Term:
    """One named contribution to a phase's peak."""

    name: str
    bytes: int
    keys: tuple[tuple[str, int], ...]  # the config sizes it grows with, as (key, value)
    host: bool = False  # lives in host memory even when the run is on a GPU


def _fmt(n: float) -> str:
    for unit, size in (("PiB", 2**50), ("TiB", 2**40), ("GiB", GiB), ("MiB", 2**20)):
        if n >= 0.95 * size:  # 1000 MiB reads better as 1.0 GiB
            v = n / size
            return f"{v:.0f} {unit}" if v >= 10 else f"{v:.1f} {unit}"
    return f"{n / 1024:.0f} KiB"


def run_device(cfg: DictConfig) -> str:
    """``cuda`` or ``cpu``: where ``trainer.accelerator`` puts the run."""
    acc = str(cfg.trainer.get("accelerator", "cpu"))
    return "cuda" if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()) else "cpu"


# ------------------------------------------------------------------------------------------------ the energy
def _energy_facts(cfg: DictConfig) -> tuple[int, int, bool, int]:
    """``(d, modes, has_sampler, floats per point of log r with ∇log r)`` of ``cfg.energy``, without building a
    user's energy (the platform's own energies are cheap to build; another target's class is only imported)."""
    from hydra._internal.utils import _locate
    from hydra.utils import instantiate

    from sampler.energies.base import Energy

    target = str(cfg.energy.get("_target_", ""))
    dim = cfg.energy.get("dim")
    modes, has_sampler, closed_form = 0, True, False
    try:
        cls = _locate(target)  # (hydra.utils.get_class logs an error for a function target)
    except Exception:  # noqa: BLE001 - an unknown target is reported when the energy is built
        cls = None
    if cls is not None:
        fn = getattr(cls, "sample", None)
        has_sampler = callable(fn) and fn is not Energy.sample
        closed_form = getattr(cls, "log_reward_and_grad", None) is not Energy.log_reward_and_grad
        if is_platform_class(target):
            try:
                energy = instantiate(cfg.energy)
                dim, modes = energy.dim, int(getattr(energy, "n_modes", 0))
            except Exception:  # noqa: BLE001 - a bad argument is reported when the energy is built
                pass
        if dim is None:
            try:
                param = inspect.signature(cls).parameters.get("dim")
            except (TypeError, ValueError):
                param = None
            default = param.default if param is not None else getattr(cls, "dim", None)
            dim = default if isinstance(default, int) else None
    if dim is None and "means" in cfg.energy:
        dim = len(cfg.energy.means[0])
    d = int(dim) if isinstance(dim, int) and dim > 0 else 2
    # log r and ∇log r at N points: a mixture holds a few [N, M] tensors; closed forms a few [N, d]; autograd more
    per_point = 5 * modes + 4 * d if modes else (4 * d if closed_form else 12 * d)
    return d, modes, has_sampler, per_point


# ------------------------------------------------------------------------------------------------ networks
def _net_params(d: int, out: int, arch: str, H: int, L: int) -> int:
    """Parameters of a :class:`~sampler.gfn.nets.StateTimeNet` (time features: 64 phases, 128 inputs)."""
    time_net = 128 * H + (H + H * H + H if arch == "pis" else 0)
    return 64 + time_net + d * H + H + L * (H * H + H) + H * out + out


def _time_scale_params(k: int, H: int, layers: int) -> int:
    """Parameters of the Langevin scale g(t): 64 phases, Linear(128, H), (layers − 1) × Linear(H, H), Linear(H, k)."""
    return 64 + 128 * H + H + (layers - 1) * (H * H + H) + H * k + k


# ------------------------------------------------------------------------------------------------ the model
@dataclass
class _Model:
    """The sizes and switches of a config that the terms depend on."""

    B: int
    T: int
    H: int
    L: int
    d: int
    out: int  # policy outputs: 2d with a learned variance, else d
    has_sampler: bool
    per_point: int  # floats of log r and ∇log r per point
    langevin: bool
    flow: str
    learn_pb: bool
    native: bool  # the CPU kernels (no big intermediates in the rollout and the recorded pass)

    @classmethod
    def of(cls, cfg: DictConfig, device: str) -> _Model:
        m = cfg.model
        d, _, has_sampler, per_point = _energy_facts(cfg)
        native = device == "cpu" and _engine(m) in ("auto", "native") and not m.get("compile", False)
        return cls(
            B=int(cfg.train.batch_size),
            T=int(m.T),
            H=int(m.hidden_dim),
            L=int(m.get("num_layers", 2)),
            d=d,
            out=2 * d if m.get("learned_variance", True) else d,
            has_sampler=has_sampler,
            per_point=per_point,
            langevin=bool(m.get("langevin", False)),
            flow=str(m.get("flow", "scalar")),
            learn_pb=bool(m.get("learn_pb", False)),
            native=native,
        )

    def forward_rollout(self, n: int) -> tuple[int, int]:
        """Floats ``(kept, temporary)`` of a forward rollout of n rows without a gradient: the states and
        log-densities it returns, and what its loop and batched passes hold meanwhile."""
        T, d, H = self.T, self.d, self.H
        kept = (T + 1) * n * d + 2 * T * n
        tmp = 0 if self.native else 6 * T * n * d  # the PyTorch loop's drifts and variances, stacked
        if self.langevin:
            tmp += 2 * T * n * d  # ∇log r per step, and stacked
        if self.flow != "scalar":
            tmp += T * n * (1 if self.native else 3 * H)
            if self.flow == "forward_looking":
                tmp += T * n * self.per_point
        return kept, tmp

    def backward_rollout(self, n: int) -> int:
        """Floats of a backward rollout of n rows without a gradient (the evaluation's EUBO)."""
        T, d, H = self.T, self.d, self.H
        floats = 2 * (T + 1) * n * d + T * n * self.out + (0 if self.native else T * n * (3 * H + 8 * d))
        if self.langevin:
            floats += (T + 1) * n * (self.per_point + 2 * d)
        if self.flow != "scalar" or self.learn_pb:
            floats += T * n * (1 if self.native else 3 * H)
        return floats


def _network_params(cfg: DictConfig, s: _Model) -> int:
    m = cfg.model
    arch = str(m.get("arch", "pis"))
    n = _net_params(s.d, s.out, arch, s.H, s.L)
    if s.flow != "scalar":
        n += _net_params(s.d, 1, arch, s.H, s.L)
    pb = _net_params(s.d, 2 * s.d, arch, s.H, s.L) if s.learn_pb else 0
    n += pb
    if s.langevin:
        n += _time_scale_params(s.d if m.get("langevin_per_dim") else 1, s.H, int(m.get("lgv_layers", 2)))
    if _has_teacher(cfg):
        n += _net_params(s.d, s.out, arch, s.H, s.L) + pb
    return n


def _has_teacher(cfg: DictConfig) -> bool:
    return cfg.get("teacher", {}).get("_target_") is not None


def _held(cfg: DictConfig, s: _Model, training: bool) -> list[Term]:
    """What a loaded module holds throughout: parameters (with Adam's moments when training) and buffers."""
    k = (("model.hidden_dim", s.H), ("model.num_layers", s.L))
    params = (3 if training else 1) * _network_params(cfg, s) * FLOAT
    terms = [Term("parameters and Adam state" if training else "parameters", params, k)]
    for group, name in (("buffer", "replay buffer"), ("local_search", "local-search buffer")):
        section = cfg.get(group, {})
        if section.get("_target_") is not None and "capacity" in section:
            cap = int(section.capacity)
            # states [C, d], keys, insertion ids, and the sampling weights/ranks (float64, int64)
            terms.append(Term(name, cap * (FLOAT * s.d + 60), ((f"{group}.capacity", cap), ("energy.dim", s.d))))
    return terms


def _terms(cfg: DictConfig, device: str, K: int, training: bool) -> tuple[list[Term], list[Term], list[Term]]:
    """``(persistent, training step, evaluation)`` terms of a run on ``device`` evaluating K samples."""
    s = _Model.of(cfg, device)
    B, T, H, d = s.B, s.T, s.H, s.d
    kB, kT, kH, kK, kd = (
        ("train.batch_size", B),
        ("model.T", T),
        ("model.hidden_dim", H),
        ("eval.K", K),
        ("energy.dim", d),
    )
    persistent = _held(cfg, s, training)
    train: list[Term] = []
    if training:
        # every GELU's input and output at every step, per network trained on sampled states; kept between steps
        layers = 2 * (s.L + 1) * B * H  # per step: each GELU's input and output
        tape = (1 + _has_teacher(cfg)) * T * (layers + B * s.out)  # the policy (and the teacher's)
        if s.flow != "scalar":
            tape += T * (layers + B)  # the flow network at the T non-terminal states
        if s.learn_pb:
            tape += (T - 1) * (layers + B * 2 * d)  # the P_B corrections at states 2..T
        persistent.append(Term("recorded activations", tape * FLOAT, (kB, kT, kH, ("model.num_layers", s.L))))
        head = T * B * (s.out + (3 * d if s.native else 10 * d))  # log P_F head and its gradient
        states = (T + 1) * B * d + 6 * T * B  # states, log P_F, log P_B, their gradients
        per_state = 0
        if s.langevin:  # ∇log r per step (list and stack); a backward phase takes log r and ∇log r at all states
            per_state += 3 * T * B * d + (T + 1) * B * (s.per_point + d)
        if s.flow == "forward_looking":
            per_state += (T + 1) * B * (s.per_point + 2)
        losses = 16 * B * (T + 1)  # SubTB/DB residuals in float64
        traj = states + head + per_state + losses
        if not s.native:
            traj += 3 * T * B * H  # gelu_backward and matmul temporaries of the recorded pass's backward
        train.append(Term("trajectories", traj * FLOAT, (kB, kT, kd)))
        threads = torch.get_num_threads() if s.native else 0  # the native backward accumulates per thread
        grads = (threads + 1) * _network_params(cfg, s) * FLOAT
        train.append(Term("gradients", grads, (kH, ("model.num_layers", s.L))))
        ls = cfg.get("local_search", {})
        if ls.get("_target_") is not None and "n_steps" in ls:
            chains = int(ls.n_steps) - int(ls.burn_in)
            floats = 2 * chains * B * (d + 2)  # the chains' kept proposals and the accepted ones
            train.append(Term("local-search chains", floats * FLOAT, (("local_search.n_steps", chains), kB, kd)))

    # evaluation: the forward rollout is kept; then the W2 thread runs beside the backward rollout and the MMD
    kept, tmp = s.forward_rollout(K)
    ev = [Term("evaluation rollouts", (kept + tmp) * FLOAT, (kK, kT, kd))]
    if s.has_sampler:
        pairs = K * K
        ev = [
            Term("evaluation rollouts", (kept + max(tmp, s.backward_rollout(K))) * FLOAT, (kK, kT, kd)),
            Term("exact W2 (K×K float64)", W2_BYTES_PER_PAIR * pairs, (kK, kK), host=True),
            Term("MMD kernel matrices (K×K float64)", MMD_BYTES_PER_PAIR * pairs, (kK, kK), host=True),
        ]
    return persistent, train, ev


def sampling_terms(cfg: DictConfig, n: int, batch: int, device: str = "cpu") -> list[Term]:
    """The terms of drawing ``n`` samples in batches of ``batch`` from a loaded module: parameters and buffers,
    the ``[n, d]`` float32 output (gathered on the CPU) and one batch's rollout without a gradient.

    Args:
        cfg: the run config.
        n: samples to draw.
        batch: rows per rollout.
        device: where the module runs.

    Returns:
        The terms, the runtime included (the config keys are named ``n`` and ``batch``).
    """
    s = _Model.of(cfg, device)
    rows = min(batch, n)
    kept, tmp = s.forward_rollout(rows)
    return [
        *_runtime(device),
        *_held(cfg, s, training=False),
        Term("samples", n * s.d * FLOAT, (("n", n), ("energy.dim", s.d)), host=True),
        Term("one batch's rollout", (kept + tmp) * FLOAT, (("batch", rows), ("model.T", s.T), ("energy.dim", s.d))),
    ]


def _runtime(device: str) -> list[Term]:
    if not str(device).startswith("cuda"):
        return [Term("runtime", RUNTIME_BYTES, (), host=True)]
    return [
        Term("runtime", CUDA_HOST_RUNTIME_BYTES, (), host=True),
        Term("CUDA workspaces", CUDA_DEVICE_RUNTIME_BYTES, ()),
    ]


def _total(terms: list[Term], device: str, host: bool | None = None) -> int:
    """Bytes of ``terms`` (on a GPU: only the host (``host=True``) or only the device ones)."""
    if not str(device).startswith("cuda") or host is None:
        return sum(t.bytes for t in terms)
    return sum(t.bytes for t in terms if t.host == host)


def _estimate(cfg: DictConfig, device: str | None, K: int | None, training: bool) -> tuple[str, dict[str, list]]:
    """``(device, {"train": terms, "eval": terms})`` with the runtime and the persistent terms in both phases."""
    device = device or run_device(cfg)
    K = int(cfg.eval.K if K is None else K)
    persistent, train, ev = _terms(cfg, device, K, training)
    runtime = _runtime(device)
    phases = {"eval": runtime + persistent + ev}
    if training:
        phases["train"] = runtime + persistent + train
    return device, phases


def estimate_bytes(cfg: DictConfig, device: str | None = None, K: int | None = None, training: bool = True) -> dict:
    """The peak memory of a run of ``cfg``: of a training step and of an evaluation (which happens while the
    training state is held), with the main terms named.

    Args:
        cfg: the composed run config (sizes already validated as positive integers).
        device: ``cpu`` or ``cuda``; by default where ``trainer.accelerator`` puts the run.
        K: evaluation samples (default ``eval.K``).
        training: ``False`` for re-evaluating a checkpoint: no optimiser state, recorded activations or
            training trajectories.

    Returns:
        ``{"device", "train", "eval", "peak", "host", "terms"}``: bytes of the training peak (0 when not
        ``training``), of the evaluation peak (both with the runtime) and their maximum; ``host`` the part of the
        peak phase in host memory (on the CPU: all of it); ``terms`` every term's bytes by name, largest first.
    """
    device, phases = _estimate(cfg, device, K, training)
    totals = {k: _total(v, device) for k, v in phases.items()}
    peak = max(totals, key=totals.get)
    terms: dict[str, int] = {}
    for t in sorted((t for v in phases.values() for t in v), key=lambda t: -t.bytes):
        terms.setdefault(t.name, t.bytes)
    return {
        "device": device,
        "train": totals.get("train", 0),
        "eval": totals["eval"],
        "peak": totals[peak],
        "host": _total(phases[peak], device, host=True),
        "terms": terms,
    }


# ----------------------------------------------------------------------------------------------- available
def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_free(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """Limit minus usage of this process's memory cgroup (v2, else v1), or None without a limit."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    own = {}  # controller ("" for v2) -> this process's cgroup path
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            for c in parts[1].split(","):
                own[c] = parts[2].lstrip("/")
    candidates = []
    for base in ([root / own[""]] if "" in own else []) + [root]:  # v2: the own cgroup, then the namespace root
        candidates.append((base / "memory.max", base / "memory.current"))
    v1 = root / "memory"
    for base in ([v1 / own["memory"]] if "memory" in own else []) + [v1]:
        candidates.append((base / "memory.limit_in_bytes", base / "memory.usage_in_bytes"))
    for limit_path, usage_path in candidates:
        if not limit_path.exists():
            continue
        limit = _read_int(limit_path)  # None for "max"
        if limit is None or limit >= _UNLIMITED:
            return None
        return max(limit - (_read_int(usage_path) or 0), 0)
    return None


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _own_rss() -> int:
    """Resident bytes of this process: already held, so part of what the run can use."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def available_bytes(device: str = "cpu") -> int | None:
    """Memory this process can still use on ``device``, or None where it cannot be told.

    Args:
        device: ``cpu`` (host memory: the smaller of ``MemAvailable`` and the cgroup's limit minus usage, plus
            what this process already holds) or ``cuda`` (free device memory, ``torch.cuda.mem_get_info``).

    Returns:
        Bytes, or None.
    """
    if str(device).startswith("cuda"):
        if not torch.cuda.is_available():
            return None
        index = torch.device(device).index
        return int(torch.cuda.mem_get_info(index if index is not None else torch.cuda.current_device())[0])
    free = [b for b in (_mem_available(), _cgroup_free()) if b is not None]
    return min(free) + _own_rss() if free else None


# ------------------------------------------------------------------------------------------------- the check
def _advice(term: Term, labels: dict[str, str]) -> str:
    """``reduce <key>``: of the dominant term's sizes, the one furthest above its typical value."""
    if not term.keys:
        return "reduce the sizes"
    key, _ = max(term.keys, key=lambda kv: kv[1] / TYPICAL.get(kv[0], 1))
    return f"reduce {labels.get(key, key)}"


def memory_error(need: int, free: int, terms: list[Term], where: str = "", labels: dict[str, str] | None = None) -> str:
    """The one-line message for ``need`` bytes against ``free``: the dominant term's sizes, the largest terms and
    the key to reduce (``labels`` renames config keys, e.g. ``{"eval.K": "K"}`` for a script's argument)."""
    labels = labels or {}
    ranked = sorted((t for t in terms if t.bytes > 0), key=lambda t: -t.bytes)
    top = ranked[0]
    counts = {k: [kk for kk, _ in top.keys].count(k) for k, _ in top.keys}
    power = {1: "", 2: "²", 3: "³"}
    sizes = " × ".join(
        f"{labels.get(k, k)}={v}" if counts[k] == 1 else f"({labels.get(k, k)}={v}){power.get(counts[k], '')}"
        for k, v in dict(top.keys).items()
    )
    listing = ", ".join(f"{t.name} {_fmt(t.bytes)}" for t in ranked[:3])
    return (
        f"the configured sizes need about {_fmt(need)}{where} ({sizes + ': ' if sizes else ''}{listing}); "
        f"{_fmt(free)} are available here — {_advice(top, labels)}"
    )


def _check(phases: dict[str, list[Term]], device: str, labels: dict[str, str] | None) -> None:
    """Raise :class:`ConfigError` for the first phase (largest first) that does not fit on ``device`` (on a GPU:
    its device terms in the GPU's free memory, its host terms in host memory)."""
    on_cpu = not str(device).startswith("cuda")
    for terms in sorted(phases.values(), key=lambda v: -_total(v, device)):
        for where in ("cpu",) if on_cpu else (device, "cpu"):
            host = None if on_cpu else where == "cpu"
            need = _total(terms, device, host=host)
            free = available_bytes(where)
            if free is None or need <= free:
                continue
            shown = [t for t in terms if t.name != "runtime" and (host is None or t.host == host)]
            label = "" if host is None else (" of host memory" if host else " of GPU memory")
            raise ConfigError(memory_error(need, free, shown, label, labels))


def check_memory(
    cfg: DictConfig,
    device: str | None = None,
    K: int | None = None,
    training: bool = True,
    labels: dict[str, str] | None = None,
) -> dict:
    """Raise :class:`ConfigError` (one line) when the estimated peak of ``cfg`` exceeds the memory available.

    Args:
        cfg: the composed run config.
        device: ``cpu`` or ``cuda`` (default: where ``trainer.accelerator`` puts the run).
        K: evaluation samples (default ``eval.K``).
        training: include the training state (``False``: re-evaluating a checkpoint).
        labels: names to show instead of config keys in the message (``{"eval.K": "K"}`` for a script).

    Returns:
        The :func:`estimate_bytes` dict (the check passed, or the available memory could not be told).

    Raises:
        ConfigError: ``the configured sizes need about … GiB (…); … GiB are available here — reduce <key>``.
    """
    from sampler.training.config_check import is_discrete_config  # noqa: PLC0415 - config_check imports this module

    if is_discrete_config(cfg):
        return {}  # a grid small enough to build has a small network and batch; the state count is checked on build
    device, phases = _estimate(cfg, device, K, training)
    _check(phases, device, labels)
    return estimate_bytes(cfg, device, K, training)


def check_sampling(cfg: DictConfig, n: int, batch: int, device: str = "cpu") -> int:
    """Raise :class:`ConfigError` (one line, naming ``n`` or ``batch``) when drawing ``n`` samples in batches of
    ``batch`` (:func:`sampling_terms`) does not fit here.

    Returns:
        The estimated bytes.
    """
    from sampler.training.config_check import is_discrete_config  # noqa: PLC0415

    if is_discrete_config(cfg):  # the output [n, ndim] and one batch's states [batch, ndim·(height-1) + 1, ndim]
        d, h = int(cfg.energy.ndim), int(cfg.energy.height)
        out, rollout = (("n", n), ("energy.ndim", d)), (("batch", batch), ("energy.ndim", d), ("trajectory", d * h))
        terms = [
            Term("the samples", n * d * FLOAT, out),
            Term("one batch's rollout", 3 * batch * d * h * d * 8, rollout),
        ]
    else:
        terms = sampling_terms(cfg, n, batch, device)
    _check({"sample": terms}, device, None)
    return _total(terms, device)

"""Re-run a finished run from its saved ``config_resolved.yaml`` into a new directory and compare every final
metric with the original's ``metrics.json``.

Only ``paths`` change: ``paths.run_dir`` is the new directory and ``paths.root`` its parent (so ``train`` never
takes the new directory for a fresh run under ``<root>/runs/`` and continues another unfinished run of the same
config instead). Nothing is copied from the original directory, so a moved run, or one whose ``paths.root`` no
longer exists, reproduces the same; ``diff_runs.py RUN REPRODUCTION`` finds equal configs. The torch thread count
of the original (``manifest.json``) is used while training.

On CPU the platform is deterministic, so metrics must be identical (``rtol = atol = 0``). On a GPU, kernels that
reduce in a non-deterministic order make runs drift apart; the default tolerance there is
``rtol = GPU_RTOL, atol = GPU_ATOL`` (both overridable). Timings (keys ending in ``_s``) are not compared.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sampler.analysis.runs import CONFIG, METRICS, REPRODUCTION_REPORT, REPRODUCTION_TAG, Run, is_timing, load_run

GPU_RTOL = 1e-3
GPU_ATOL = 1e-5


class ReproduceError(ValueError):
    """A run that cannot be reproduced here; the message is one line."""


@dataclass
class Comparison:
    key: str
    original: float | None
    reproduced: float | None
    match: bool


@dataclass
class Reproduction:
    """The outcome of :func:`reproduce`.

    Attributes:
        source: the original run directory.
        run_dir: the reproduction's run directory.
        device: ``(original, reproduction)`` devices from the two manifests.
        torch_threads: threads used for the reproduction.
        rtol, atol: the tolerance applied (0, 0: exact).
        rows: one comparison per metric (timings excluded).
        skipped: timing keys that were not compared.
    """

    source: Path
    run_dir: Path
    device: tuple[str | None, str | None]
    torch_threads: int | None
    rtol: float
    atol: float
    rows: list[Comparison] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def all_match(self) -> bool:
        return all(r.match for r in self.rows)

    def to_json(self) -> dict:
        out = asdict(self)
        out.update(source=str(self.source), run_dir=str(self.run_dir), all_match=self.all_match)
        return out


def tolerance(devices: tuple[str | None, ...], rtol: float | None = None, atol: float | None = None):
    """``(rtol, atol)``: exact when every device is the CPU, the GPU defaults otherwise; explicit values win."""
    on_cpu = all(d in (None, "cpu") for d in devices)
    return (
        (0.0 if on_cpu else GPU_RTOL) if rtol is None else float(rtol),
        (0.0 if on_cpu else GPU_ATOL) if atol is None else float(atol),
    )


def close(a, b, rtol: float, atol: float) -> bool:
    """``a == b`` (NaN equals NaN) when both tolerances are 0; else ``|a − b| ≤ atol + rtol·|b|``."""
    if a is None or b is None:
        return False
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if rtol == 0 and atol == 0:
        return a == b
    return abs(a - b) <= atol + rtol * abs(b)


def compare_metrics(original: dict, reproduced: dict, rtol: float = 0.0, atol: float = 0.0):
    """``(rows, skipped)``: a :class:`Comparison` per key of either dict (a key only one has never matches), and
    the timing keys left out."""
    keys = list(dict.fromkeys([*original, *reproduced]))
    skipped = [k for k in keys if is_timing(k)]
    rows = [
        Comparison(k, original.get(k), reproduced.get(k), close(original.get(k), reproduced.get(k), rtol, atol))
        for k in keys
        if not is_timing(k)
    ]
    return rows, skipped


def default_out(run_dir: Path) -> Path:
    """``<RUN>_repro_<time with microseconds>`` beside the run."""
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    return run_dir.resolve().parent / f"{run_dir.resolve().name}{REPRODUCTION_TAG}{stamp}"


def check_reproducible(run_dir: str | Path, out: str | Path | None = None) -> tuple[Run, Path]:
    """``(run, out)`` after the checks that need no torch: a finished run with a config, and a fresh ``out``.

    Raises:
        NotARunError: ``run_dir`` is not a run directory.
        ReproduceError: the run is unfinished or ``out`` is not empty.
    """
    run = load_run(run_dir)
    if run.config is None:
        raise ReproduceError(f"{run.path} has not saved its config yet (no {CONFIG})")
    if run.metrics is None:
        raise ReproduceError(f"{run.path} is unfinished (no {METRICS}): there is nothing to compare with")
    out = Path(out).resolve() if out is not None else default_out(run.path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ReproduceError(f"{out} already exists and is not empty; a reproduction starts in a fresh directory")
    if out == run.path.resolve():
        raise ReproduceError("the reproduction needs a directory of its own (--out is the run itself)")
    return run, out


def check_trusted(run: Run, trust: Iterable[str] = ()):
    """The run's saved config, once every ``_target_`` in it is one of the platform's classes or named in ``trust``
    (building a target runs its code; see :mod:`sampler.training.trust`).

    Returns:
        The config as checked (use this object: the file could change after the check).

    Raises:
        sampler.training.trust.UntrustedTargetError: naming the key, the target and ``--trust NAME``.
    """
    from omegaconf import OmegaConf

    from sampler.training.legacy import upgrade_config
    from sampler.training.trust import check_targets

    cfg = upgrade_config(OmegaConf.load(run.path / CONFIG))  # a run of an earlier version: today's layout
    check_targets(cfg, trust, source=str(run.path / CONFIG), option="--trust ")
    return cfg


def reproduce(
    run_dir: str | Path,
    out: str | Path | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    trust: Iterable[str] = (),
) -> Reproduction:
    """Train the run of ``run_dir`` again from its ``config_resolved.yaml`` into ``out`` and compare metrics.

    Args:
        run_dir: a finished run directory.
        out: the new run directory (default: :func:`default_out`); must not exist or be empty.
        rtol, atol: tolerance of the comparison (default: exact on CPU, :data:`GPU_RTOL`/:data:`GPU_ATOL` on GPU).
        trust: dotted ``_target_`` names to build besides the platform's own classes (:func:`check_trusted`).

    Returns:
        The :class:`Reproduction`; it is also written to ``out/reproduce.json``.

    Raises:
        NotARunError, ReproduceError: see :func:`check_reproducible`; ReproduceError also when the run trained on
            a GPU and there is none here.
        sampler.training.config_check.ConfigError: the saved config names a target that is not trusted, or no
            longer passes the config checks.
    """
    run, out = check_reproducible(run_dir, out)  # answers without torch
    cfg = check_trusted(run, trust)
    import torch
    from omegaconf import OmegaConf

    from sampler.training.run import train  # (importing sampler.training registers the config resolvers)

    original_device = (run.manifest or {}).get("device")
    if original_device not in (None, "cpu") and not torch.cuda.is_available():
        raise ReproduceError(f"{run.path} trained on {original_device}, and this machine has no GPU")
    OmegaConf.update(cfg, "paths.run_dir", str(out), force_add=True)
    OmegaConf.update(cfg, "paths.root", str(out.parent), force_add=True)

    threads = (run.manifest or {}).get("torch_threads")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        _, objects = train(cfg)
    finally:
        torch.set_num_threads(before)
    new_dir = Path(objects["run_dir"])
    new = load_run(new_dir)
    devices = (original_device, (new.manifest or {}).get("device"))
    rtol, atol = tolerance(devices, rtol, atol)
    rows, skipped = compare_metrics(run.metrics, new.metrics or {}, rtol, atol)
    result = Reproduction(run.path, new_dir, devices, int(threads) if threads else before, rtol, atol, rows, skipped)
    (new_dir / REPRODUCTION_REPORT).write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result


def format_reproduction(r: Reproduction) -> str:
    """The comparison as a table for people, with a last line that says whether everything matched."""
    exact = r.rtol == 0 and r.atol == 0
    lines = [
        f"original:     {r.source}",
        f"reproduction: {r.run_dir}",
        f"device: {r.device[1]} (original: {r.device[0]}), torch threads {r.torch_threads}; "
        + ("comparison: exact" if exact else f"comparison: |a − b| ≤ {r.atol:g} + {r.rtol:g}·|b|"),
        "",
    ]
    num = lambda v: "(absent)" if v is None else repr(float(v))  # noqa: E731
    table = [("metric", "original", "reproduced", "difference", "match")]
    for c in r.rows:
        diff = "—" if c.original is None or c.reproduced is None else f"{float(c.reproduced) - float(c.original):.3g}"
        table.append((c.key, num(c.original), num(c.reproduced), diff, "yes" if c.match else "NO"))
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    for row in table:
        lines.append("  ".join(f"{x:<{w}}" if i == 0 else f"{x:>{w}}" for i, (x, w) in enumerate(zip(row, widths))))
    if r.skipped:
        lines.append(f"(timings not compared: {', '.join(r.skipped)})")
    n = len(r.rows)
    if r.all_match:
        lines.append(f"all {n} metrics {'identical' if exact else 'within tolerance'}")
    else:
        bad = [c.key for c in r.rows if not c.match]
        lines.append(f"{len(bad)} of {n} metrics differ: {', '.join(bad)}")
    return "\n".join(lines)

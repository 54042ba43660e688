"""``metrics.csv``: one row per logged training step and per evaluation, rewritten consistently on resume."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
from pathlib import Path

from sampler.training.manifest import named_write_error, write_atomic

log = logging.getLogger(__name__)

#: Column order; evaluation keys follow docs/spec.md §8.
TRAIN_KEYS = (
    "loss",
    "loss_forward",  # with several phase kinds: the latest loss of each
    "loss_backward",
    "loss_teacher",
    "loss_replay",
    "phase",
    "eps",
    "log_Z",
    "grad_norm",
    "lr_policy",
    "lr_flow",
    "buffer_size",
    "buffer_ess",
    "ls_accept_rate",
    "ls_step_size",
    "ls_buffer_size",
    "teacher_loss",
    "share_forward",
    "share_backward",
    "share_teacher",
    "share_replay",
    "n_energy_calls",  # log-reward evaluations by training so far (also in evaluation rows: the same column)
)
EVAL_KEYS = (
    "log_Z_elbo",
    "log_Z_rw",
    "log_Z_learned",
    "dlogZ",
    "dlogZ_rw",
    "eubo",
    "elbo_eubo_gap",
    "ess",
    "w2",
    "w2_floor",
    "mmd",
    "mode_coverage",
    "mode_weight_tv",
    "entropic_mode_coverage",
    "eval_K",
    "eval_s",
)
COLUMNS = ("step", "kind") + TRAIN_KEYS + EVAL_KEYS
#: Evaluation keys of a discrete target (sampler.discrete.evaluate_discrete and the run's mode tracker).
DISCRETE_EVAL_KEYS = (
    "l1_exact",
    "kl_exact",
    "jsd_exact",
    "l1_empirical",
    "l1_empirical_mean",
    "n_empirical",
    "modes_found",
    "modes_total",
    "modes_found_train",  # distinct modes sampled in training so far
    "n_trajectories",  # trajectories sampled in training so far
    "log_Z_learned",
    "log_Z",
    "eval_s",
)
#: The columns of a discrete target's run (``intrinsic_loss``: GAFN's RND loss).
DISCRETE_COLUMNS = ("step", "kind") + TRAIN_KEYS + ("intrinsic_loss",) + DISCRETE_EVAL_KEYS
#: An energy-based model's columns (task=ebm): its training statistics (chain and buffer diagnostics, the GFN
#: negative sampler's when it has one) and its evaluation (``energy_*`` and ``mmd`` in both kinds of rows).
EBM_KEYS = (
    "loss",
    "energy_real",
    "energy_fake",
    "energy_gap",
    "reg",
    "lr",
    "grad_norm",
    "chain_accept",
    "chain_step_norm",
    "chain_grad_norm",
    "chain_clipped",
    "buffer_mean_age",
    "buffer_max_age",
    "buffer_reinit",
    "buffer_spread",
    "gfn_loss",
    "gfn_steps",
    "gfn_log_Z",
    "buffer_size",
    "buffer_ess",
    "n_energy_calls",
    "n_energy_calls_langevin",
    "n_energy_calls_gfn",
    "nll_test",
    "nll_test_kde",
    "kl_true",
    "mmd",
    "classifier_confidence",
    "class_entropy",
    "eval_s",
)
EBM_COLUMNS = ("step", "kind") + EBM_KEYS


class MetricsCSV:
    """Append-only CSV with a fixed header (``columns``: a task's or a target's own, the module's ``csv_columns``);
    ``truncate(step)`` drops rows written after a checkpoint's step.

    Every write leaves the file whole: a rewrite goes through a temporary file, and an append that fails (a full
    disk) is cut back to the previous end. Reading skips lines that are not rows of this file (a line cut short
    by a kill, a damaged file).
    """

    def __init__(self, path: str | Path, columns: tuple[str, ...] = COLUMNS):
        self.path = Path(path)
        self.columns = tuple(columns)

    def _parse(self) -> tuple[list[dict[str, str]], int]:
        """``(rows, n_bad)``: the readable rows, and how many non-empty lines were not rows."""
        try:
            with self.path.open(newline="", encoding="utf-8", errors="replace") as f:
                lines = f.read().split("\n")
        except FileNotFoundError:
            return [], 0
        *complete, partial = lines  # text after the last newline is a row whose write was cut short
        complete = [line.removesuffix("\r") for line in complete]
        header = _fields(complete[0]) if complete else None
        if header is None or "step" not in header or "kind" not in header:
            return [], sum(1 for line in lines if line.strip())
        rows, bad = [], int(bool(partial.strip()))
        for line in complete[1:]:
            fields = _fields(line)
            row = dict(zip(header, fields)) if fields is not None and len(fields) == len(header) else None
            if row is None or not row["step"].isdigit() or row["kind"] not in ("train", "eval"):
                bad += bool(line.strip())
                continue
            rows.append(row)
        return rows, bad

    def _rows(self) -> list[dict[str, str]]:
        return self._parse()[0]

    def _rewrite(self, rows: list[dict]) -> None:
        out = io.StringIO(newline="")
        w = csv.DictWriter(out, fieldnames=self.columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        write_atomic(self.path, out.getvalue().encode())

    def truncate(self, step: int) -> int:
        """Keep the rows with step ≤ ``step`` (the checkpoint's: its evaluation, if any, was written before it) and
        drop unreadable lines, with a warning.

        Args:
            step: the step of the checkpoint the run resumes from.

        Returns:
            The number of unreadable lines dropped.
        """
        rows, bad = self._parse()
        keep = [r for r in rows if int(r["step"]) <= step]
        if bad:
            log.warning(
                "%s: dropped %d unreadable line(s) (a write cut short, or a damaged file); kept %d rows up to step %d",
                self.path,
                bad,
                len(keep),
                step,
            )
        self._rewrite(keep)
        return bad

    def reset(self) -> None:
        self._rewrite([])

    def append(self, step: int, kind: str, values: dict, replace: bool = False) -> None:
        row = {**{k: _fmt(v) for k, v in values.items() if k in self.columns}, "step": int(step), "kind": kind}
        if replace or not self.path.exists():
            rows = [r for r in self._rows() if not (int(r["step"]) == step and r["kind"] == kind)]
            self._rewrite(rows + [row])
            return
        size = self.path.stat().st_size
        try:
            with self.path.open("a", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerow(row)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.truncate(self.path, size)  # no half-written row
            raise named_write_error(err, self.path) from err

    def read(self) -> list[dict[str, str]]:
        return self._rows()


def _fields(line: str) -> list[str] | None:
    """The fields of one CSV line, or ``None`` when it is not one (a NUL byte, an unterminated quote)."""
    try:
        return next(csv.reader([line], strict=True), None)
    except csv.Error:
        return None


def _fmt(v):
    if isinstance(v, float):
        return repr(v)
    return v

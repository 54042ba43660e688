"""``metrics.csv``: one row per logged training step and per evaluation, rewritten consistently on resume."""

from __future__ import annotations

import csv
from pathlib import Path

#: Column order; evaluation keys follow SPEC §8.
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
)
EVAL_KEYS = (
    "log_Z_elbo",
    "log_Z_rw",
    "log_Z_learned",
    "dlogZ",
    "dlogZ_rw",
    "eubo",
    "ess",
    "w2",
    "w2_floor",
    "mmd",
    "mode_coverage",
    "eval_K",
    "eval_s",
)
COLUMNS = ("step", "kind") + TRAIN_KEYS + EVAL_KEYS


class MetricsCSV:
    """Append-only CSV with a fixed header; ``truncate(step)`` drops rows written after a checkpoint's step."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _rows(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        with self.path.open(newline="") as f:
            return list(csv.DictReader(f))

    def _rewrite(self, rows: list[dict]) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        tmp.replace(self.path)

    def truncate(self, step: int) -> None:
        """Keep training rows with step ≤ ``step`` and evaluation rows with step < ``step`` (re-done on resume)."""
        rows = self._rows()
        keep = [r for r in rows if int(r["step"]) < step or (int(r["step"]) == step and r["kind"] == "train")]
        self._rewrite(keep)

    def reset(self) -> None:
        self._rewrite([])

    def append(self, step: int, kind: str, values: dict, replace: bool = False) -> None:
        row = {**{k: _fmt(v) for k, v in values.items() if k in COLUMNS}, "step": int(step), "kind": kind}
        if replace or not self.path.exists():
            rows = [r for r in self._rows() if not (int(r["step"]) == step and r["kind"] == kind)]
            self._rewrite(rows + [row])
            return
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore").writerow(row)

    def read(self) -> list[dict[str, str]]:
        return self._rows()


def _fmt(v):
    if isinstance(v, float):
        return repr(v)
    return v

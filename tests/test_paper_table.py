"""scripts/paper_table.py on hand-made run directories: statistics, verdicts, the bolding rule (checked against
scipy's Welch test on the raw seeds), unfinished runs, formats and bad input."""

from __future__ import annotations

import csv
import io
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from scipy import stats as scipy_stats

from sampler.analysis.paper_table import (
    PaperTableError,
    Published,
    build_rows,
    format_paper_table,
    load_published,
    verdict,
)
from sampler.analysis.runs import find_run_dirs, load_run
from sampler.analysis.summary import Stat

ROOT = Path(__file__).resolve().parents[1]


def make_run(path: Path, experiment: str | None, energy: str, seed: int, metrics: dict | None, steps: int = 25000):
    path.mkdir(parents=True)
    config = {"seed": seed, "energy": {"_target_": f"sampler.energies.{energy}"}, "trainer": {"max_steps": steps}}
    (path / "config_resolved.yaml").write_text(yaml.safe_dump(config))
    choices = {"energy": energy, **({"experiment": experiment} if experiment else {})}
    (path / ".hydra").mkdir()
    (path / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    overrides = [f"energy={energy}", f"seed={seed}"] + ([f"experiment={experiment}"] if experiment else [])
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps({**metrics, "step": float(steps)}))


#: dlogZ of three seeds per row on gmm25; tb_expl_ls clearly best, tb_expl_lp_ls close to it, tb far worse.
SEEDS = {
    "tb": [1.20, 1.15, 1.25],
    "tb_expl_ls": [0.17, 0.18, 0.16],
    "tb_expl_lp_ls": [0.175, 0.19, 0.165],
}


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    for exp, values in SEEDS.items():
        for seed, v in enumerate(values):
            make_run(root / exp / f"seed={seed}", exp, "gmm25", seed, {"dlogZ": v, "dlogZ_rw": v / 10, "w2": 4 * v})
    make_run(root / "tb" / "seed=3", "tb", "gmm25", 3, None)  # unfinished
    return root


def rows_of(root: Path, metrics=("dlogZ", "dlogZ_rw", "w2")):
    return build_rows([load_run(d) for d in find_run_dirs(root)], "sendera2024", list(metrics))


def test_published_data_holds_table_c1():
    pub = load_published("sendera2024")
    assert pub[("tb", "gmm25", "dlogZ")] == Published("TB", 1.176, 0.109, 5)
    assert pub[("tb_expl_lp_ls", "manywell", "dlogZ_rw")] == Published("TB+Expl.+LP+LS", 0.07, 0.17, 5)
    assert pub[("fl_subtb_lp", "funnel", "w2")] == Published("FL-SubTB+LP", 22.2, 4.0, 5)
    # every preset row has the nine cells of the three energies
    presets = {k[0] for k in pub}
    assert {"tb", "tb_expl_ls", "tb_expl_lp_ls", "fl_subtb_lp", "vargrad_expl_lp_ls"} <= presets
    for p in presets:
        assert sum(1 for k in pub if k[0] == p) == 9, p


def test_rows_hold_mean_std_counts_and_published_numbers(sweep):
    rows = {r.preset: r for r in rows_of(sweep)}
    tb = rows["tb"]
    assert (tb.n, tb.n_unfinished, tb.steps, tb.method) == (3, 1, [25000], "TB")
    cell = tb.cells["dlogZ"]
    assert cell.ours.mean == pytest.approx(statistics.fmean(SEEDS["tb"]))
    assert cell.ours.std == pytest.approx(statistics.stdev(SEEDS["tb"]))
    assert cell.published == Published("TB", 1.176, 0.109, 5)


def test_verdicts_follow_two_combined_standard_errors():
    pub = Published("X", 1.0, 0.1, 5)
    se = (0.1**2 / 5 + 0.2**2 / 3) ** 0.5
    assert verdict(Stat(1.0 + 1.99 * se, 0.2, 3), pub) == "within"
    assert verdict(Stat(1.0 - 1.99 * se, 0.2, 3), pub) == "within"
    assert verdict(Stat(1.0 + 2.01 * se, 0.2, 3), pub) == "worse"
    assert verdict(Stat(1.0 - 2.01 * se, 0.2, 3), pub) == "better"
    # one seed: only the published standard error
    assert verdict(Stat(1.0 + 2.01 * 0.1 / 5**0.5, None, 1), pub) == "worse"


def test_verdicts_in_the_sweep(sweep):
    rows = {r.preset: r for r in rows_of(sweep)}
    assert rows["tb"].cells["dlogZ"].verdict == "within"  # 1.2 ± 0.05 against 1.176 ± 0.109
    assert rows["tb_expl_ls"].cells["dlogZ"].verdict == "within"  # 0.17 against 0.171
    assert rows["tb_expl_ls"].cells["dlogZ_rw"].verdict == "worse"  # 0.017 against 0.004 ± 0.011
    assert rows["tb"].cells["w2"].verdict == "within"  # 4.8 ± 0.2 against 4.83 ± 0.45


def test_bold_is_the_best_row_and_rows_not_significantly_worse_by_welch(sweep):
    rows = {r.preset: r for r in rows_of(sweep)}
    best = SEEDS["tb_expl_ls"]
    for preset, values in SEEDS.items():
        p = scipy_stats.ttest_ind(values, best, equal_var=False, alternative="greater").pvalue
        expected = preset == "tb_expl_ls" or p >= 0.05
        assert rows[preset].cells["dlogZ"].bold == expected, (preset, p)
    assert rows["tb_expl_lp_ls"].cells["dlogZ"].bold and not rows["tb"].cells["dlogZ"].bold


def test_markdown_latex_and_csv(sweep):
    rows = rows_of(sweep)
    md = format_paper_table(rows, "markdown")
    assert "### gmm25" in md and "| TB | 3 | 1 | 25000 |" in md and "**0.170 ± 0.010**" in md
    tex = format_paper_table(rows, "latex")
    assert r"\textbf{0.170$\pm$0.010} (0.171$\pm$0.013)" in tex and r"\begin{tabular}" in tex
    lines = list(csv.DictReader(io.StringIO(format_paper_table(rows, "csv"))))
    assert len(lines) == 3 * 3
    tb = next(r for r in lines if r["preset"] == "tb" and r["metric"] == "dlogZ")
    assert float(tb["mean"]) == pytest.approx(1.2) and tb["verdict"] == "within" and tb["unfinished"] == "1"


def test_runs_without_a_preset_or_a_metric_are_kept_apart(tmp_path):
    root = tmp_path / "s"
    make_run(root / "a", None, "gmm25", 0, {"dlogZ": 1.0})
    make_run(root / "b", "tb", "manywell", 0, {"dlogZ": 4.0, "w2": float("nan")})
    rows = {(r.preset, r.energy): r for r in rows_of(root)}
    assert rows[("(none)", "gmm25")].cells["dlogZ"].published is None
    many = rows[("tb", "manywell")]
    assert many.cells["dlogZ"].ours.mean == 4.0 and many.cells["w2"].ours is None and many.cells["w2"].verdict is None


def test_unknown_paper_is_an_error(sweep):
    with pytest.raises(PaperTableError, match="no published table 'nope'"):
        rows_of_paper = build_rows([load_run(d) for d in find_run_dirs(sweep)], "nope")
        del rows_of_paper


def test_the_script_prints_the_table_and_answers_bad_paths_in_one_line(sweep, tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "paper_table.py")]
    ok = subprocess.run([*cmd, str(sweep)], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert "cells better / within / worse than published: 3 / 4 / 2" in ok.stdout
    bad = subprocess.run([*cmd, str(tmp_path / "missing")], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and len(bad.stderr.splitlines()) == 1
    paper = subprocess.run([*cmd, str(sweep), "--paper", "nope"], capture_output=True, text=True, cwd=ROOT)
    assert paper.returncode == 2 and "no published table" in paper.stderr

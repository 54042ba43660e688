"""The discrete benchmark (`scripts/benchmark.py --discrete`): the record it writes for our side, and the one-line
errors when the torchgfn environment it compares against is missing or broken. No timing is asserted here."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch
from conftest import ROOT


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_script", ROOT / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    n = torch.get_num_threads()
    yield module
    torch.set_num_threads(n)  # the discrete mode runs at one thread


def test_our_side_writes_one_record_per_case(benchmark, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--discrete", "--no-anchor", "--cases", "hypergrid8x2_b16_tb", "--rounds", "1", "--steps", "2"]
    assert benchmark.main(argv + ["--warmup", "0", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["machine"]["threads"] == 1 and {"cpu_model", "torch", "loadavg_before"} <= set(result["machine"])
    assert result["settings"]["anchor"] is None and result["settings"]["steps"] == 2
    (rec,) = result["records"]
    assert rec["case"] == "hypergrid8x2_b16_tb" and (rec["ndim"], rec["height"], rec["batch_size"]) == (2, 8, 16)
    # 64 states, fewer than 16 trajectories x 15 steps: "auto" tabulates, and the untabulated run is a second one
    assert rec["tabulated"] is True and set(rec["breakdown_s"]) == {"tabulated", "untabulated"}
    keys = {"median_ours_s", "median_ours_untabulated_s", "floor_s", "floor_gflops", "ours_over_floor"}
    assert keys <= set(rec) and all(rec[k] > 0 for k in keys)
    assert not {"median_torchgfn_s", "speedup", "target_5x_met"} & set(rec)  # no anchor, no comparison
    # every trajectory takes 1 to 15 transitions on an 8x8 grid (14 moves and the stop); the floor runs at their count
    assert 1 <= rec["mean_transitions_ours"] / 16 <= 15
    assert rec["floor_rows"] == round(rec["mean_transitions_ours"])
    (row,) = rec["per_round"]
    assert row["ours_s"] == rec["median_ours_s"] and row["ours_untabulated_s"] == rec["median_ours_untabulated_s"]
    assert set(rec["breakdown_s"]["untabulated"]) == {"rollout", "sample_only", "loss_backward", "adam"}
    assert "hypergrid8x2_b16_tb" in capsys.readouterr().out


@pytest.mark.parametrize("python", ["missing", "without_torchgfn"])
def test_a_missing_torchgfn_environment_is_one_line_and_a_failure(benchmark, tmp_path, capsys, python):
    exe = str(tmp_path / "venv" / "bin" / "python") if python == "missing" else sys.executable
    out = tmp_path / "bench.json"
    code = benchmark.main(["--discrete", "--torchgfn-python", exe, "--cases", "hypergrid8x2_b16_tb", "--out", str(out)])
    err = capsys.readouterr().err
    assert code != 0 and not out.exists()
    assert err.count("\n") == 1 and err.startswith("error: ") and exe in err
    assert ("no torchgfn environment" if python == "missing" else "cannot import torchgfn") in err


def test_an_unknown_case_is_one_line(benchmark, capsys):
    assert benchmark.main(["--discrete", "--no-anchor", "--cases", "hypergrid9x9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown case hypergrid9x9" in err and "hypergrid8x4_b128_db" in err

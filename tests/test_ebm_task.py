"""`python scripts/train.py task=ebm ...`: energy-based models learned from data as a task of the platform — the
config groups, the run directory and its metrics, resume bit for bit, SIGTERM, a non-finite loss, bad input in one
line with nothing written, the GFN negative sampler, generation by scripts/sample.py, and the analysis scripts on EBM
run directories. Tiny sizes: each run takes a few seconds."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY, compose_cfg

from sampler.app.cli import UsageError
from sampler.app.composition import composition_error
from sampler.ebm.evaluation import IMAGE_KEYS, TOY_KEYS
from sampler.ebm.nets import MLPEnergy
from sampler.training.metrics_csv import MetricsCSV
from sampler.training.run import main, train

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

#: TINY (the sampler's small sizes: batch 16, eval.K 64, no plots, ...) with an EBM of the same size: a 16×16 MLP,
#: 3-step chains from a buffer of 64, 6 steps with an evaluation and a checkpoint every 3; toy sets of 200 training
#: points (TOY_SIZES).
EBM = [
    *TINY,
    "task=ebm",
    "ebm.net.hidden=[16,16]",
    "ebm.langevin.n_steps=3",
    "ebm.buffer.capacity=64",
    "ebm.generate.n_steps=5",
    "trainer.max_steps=6",
    "eval.every=3",
    "checkpoint.every=3",
    "trainer.log_every_n_steps=1",
]
TOY_SIZES = ["data.n_train=200", "data.n_test=100"]
#: The GFN negative sampler at TINY's size (T=10, 16 hidden units), one GFN step per EBM step.
GFN = ["ebm.negatives=gfn", "ebm.gfn.steps_per_ebm_step=1"]


class SignalingMLP(MLPEnergy):
    """An MLP energy that signals its own process during a chosen training step, as a scheduler would:
    ``EBM_SIGNAL=SIGTERM@4`` sends SIGTERM during step 4 (its 4th forward pass in training mode: one per step)."""

    def __init__(self, dim: int, **kwargs):
        super().__init__(dim, **kwargs)
        name, _, at = os.environ.get("EBM_SIGNAL", "").partition("@")
        self.plan = (signal.Signals[name], int(at)) if name else None
        self.n_train_calls = 0

    def forward(self, x):
        if self.training and self.plan is not None:
            self.n_train_calls += 1
            if self.n_train_calls == self.plan[1]:
                os.kill(os.getpid(), self.plan[0])
                time.sleep(0.05)  # its handler runs before the step goes on
        return super().forward(x)


class NaNFromStep4(MLPEnergy):
    """An MLP energy whose energies are NaN in training mode from the 4th training step on (step index 3)."""

    def __init__(self, dim: int, **kwargs):
        super().__init__(dim, **kwargs)
        self.n_train_calls = 0

    def forward(self, x):
        e = super().forward(x)
        if self.training:
            self.n_train_calls += 1
            if self.n_train_calls >= 4:
                return e * float("nan")
        return e


class Square:
    """A user's data set that is no EBMData: uniform points on [0, 1]², with the attributes the EBM reads."""

    def __init__(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.train, self.test = torch.rand(n, 2, generator=g), torch.rand(n // 2, 2, generator=g)
        self.dim, self.bounds, self.name = 2, (-0.5, 1.5), "square"


def ebm_cfg(run_dir: Path, *overrides: str):
    """The EBM config at the tiny sizes with ``overrides`` (a toy set unless ``data=`` chooses another)."""
    other = any(o.startswith("data=") and o not in ("data=moons", "data=8gaussians") for o in overrides)
    base = [o for o in EBM if "ebm/net=cnn" not in overrides or not o.startswith("ebm.net.hidden")]
    return compose_cfg([*base, *([] if other else TOY_SIZES), *overrides], run_dir)


def exit_of(cfg, capsys) -> tuple[int, list[str]]:
    """``(exit status, stderr lines)`` of ``main(cfg)``, as ``scripts/train.py`` would end."""
    with pytest.raises(SystemExit) as stopped:
        main(cfg)
    return stopped.value.code, capsys.readouterr().err.strip().splitlines()


def rows_without_timing(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "eval_s"} for r in MetricsCSV(path).read()]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def script(name: str):
    """The ``main(argv) -> int`` of ``scripts/<name>.py``, imported in-process."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def pcd_run(tmp_path_factory) -> tuple[Path, dict]:
    """A finished PCD run on two moons (shared by the tests that only read it)."""
    run_dir = tmp_path_factory.mktemp("pcd") / "run"
    metrics, _ = train(ebm_cfg(run_dir))
    return run_dir, metrics


# ------------------------------------------------------------------------------------------------------ config
def test_task_ebm_composes_its_groups_drops_energy_and_leaves_the_sampler_config_alone():
    cfg = compose_cfg(["task=ebm"])
    assert cfg.task == "ebm" and "energy" not in cfg
    assert cfg.data._target_ == "sampler.ebm.data.ToyData" and cfg.data.name == "moons"
    assert cfg.ebm.net._target_ == "sampler.ebm.nets.MLPEnergy" and cfg.ebm.negatives == "langevin"
    assert cfg.model._target_ == "sampler.gfn.DiffusionGFN"  # the sampler groups stay: they configure a GFN sampler
    cfg = compose_cfg(["task=ebm", "data=digits", "ebm/net=cnn"])
    assert cfg.data._target_ == "sampler.ebm.data.DigitsData" and cfg.ebm.net._target_ == "sampler.ebm.nets.CNNEnergy"
    sampler = compose_cfg([])
    assert not {"task", "data", "ebm"} & set(sampler) and sampler.energy._target_ == "sampler.energies.GMM25"


def test_data_options_and_sweeps_over_them_are_checked_when_the_command_composes():
    assert composition_error(["task=ebm", "data=2spirals"]) is None
    sweep = ["-m", "task=ebm", "data=moons,rings,8gaussians", "ebm.negatives=langevin,gfn", "seed=0,1,2"]
    assert composition_error(sweep) is None
    unknown = composition_error(["task=ebm", "data=foo"])
    assert unknown.startswith("error: data=foo is not an option") and "moons" in unknown and "\n" not in unknown
    assert composition_error(["-m", "task=ebm", "data=moons,foo"]).startswith("error: data=foo is not an option")


def test_every_data_option_builds_its_data_set():
    from sampler.ebm.config import build_data

    for path in sorted((ROOT / "conf" / "data").glob("*.yaml")):
        if path.stem in ("array", "custom"):  # a file or a class of the user's
            continue
        cfg = compose_cfg(["task=ebm", f"data={path.stem}"])
        data = build_data(cfg)
        assert data.name == path.stem and data.dim == (64 if path.stem == "digits" else 2)


# ------------------------------------------------------------------------------------------------- the run
def test_a_pcd_run_writes_the_run_directory_and_the_documented_metrics(pcd_run):
    run_dir, metrics = pcd_run
    assert set(metrics) == (set(TOY_KEYS) - {"kl_true"}) | {"step"}  # moons: no true density
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    assert metrics["step"] == 6
    assert metrics["energy_gap"] == pytest.approx(metrics["energy_fake"] - metrics["energy_real"])
    assert metrics["n_energy_calls"] == 6 * 16 * (3 + 1)  # six steps of 16 chains, 3 Langevin steps (+ the start)
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    assert torch.load(run_dir / "samples.pt").shape == (64, 2)
    for name in ("config_resolved.yaml", "manifest.json", "metrics.csv", ".hydra", "checkpoints/last.ckpt"):
        assert (run_dir / name).exists() or name == ".hydra", name  # .hydra only under Hydra
    saved = (run_dir / "config_resolved.yaml").read_text()
    assert "task: ebm" in saved and "method: buffer" in saved and "t_scale: 1.0" in saved  # the recorded defaults
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["sampler_state"]
    assert state["negatives"]["buffer"]["states"].shape == (64, 2)  # the chain buffer is checkpointed
    evals = [r for r in MetricsCSV(run_dir / "metrics.csv").read() if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == ["3", "6"] and float(evals[-1]["mmd"]) == metrics["mmd"]
    for key in ("nll_test", "nll_test_kde", "energy_gap"):  # the EBM's own columns, not the sampler's
        assert float(evals[-1][key]) == metrics[key], key
    trains = [r for r in MetricsCSV(run_dir / "metrics.csv").read() if r["kind"] == "train"]
    assert trains and all(r["chain_accept"] and r["energy_real"] for r in trains)
    assert "dlogZ" not in (run_dir / "metrics.csv").read_text().splitlines()[0]


def test_the_step_statistics_hold_energies_chains_buffer_and_calls(tmp_path):
    from sampler.ebm.config import check_ebm_config
    from sampler.ebm.module import EBMModule

    cfg = ebm_cfg(tmp_path / "run", "ebm.grad_clip=10")
    check_ebm_config(cfg)
    module = EBMModule(cfg)
    opt = torch.optim.Adam(module.net.parameters(), lr=1e-3)
    module.train_step(0, opt)
    keys = {"loss", "energy_real", "energy_fake", "energy_gap", "grad_norm", "lr", "chain_accept", "chain_step_norm"}
    keys |= {"chain_grad_norm", "buffer_mean_age", "buffer_reinit", "n_energy_calls", "n_energy_calls_langevin"}
    assert keys <= set(module.stats) and all(math.isfinite(module.stats[k]) for k in keys)
    assert module.stats["n_energy_calls"] == module.n_energy_calls == 16 * 4


def test_a_digits_run_with_the_cnn_reports_the_image_metrics_and_plots_grids_and_chains(tmp_path):
    run_dir = tmp_path / "run"
    overrides = ["data=digits", "ebm/net=cnn", "ebm.net.channels=[4,4,4]", "trainer.max_steps=2", "eval.plots=true"]
    metrics, _ = train(ebm_cfg(run_dir, *overrides))
    assert set(metrics) == set(IMAGE_KEYS) | {"step"}
    assert 0.1 <= metrics["classifier_confidence"] <= 1 and 0 <= metrics["class_entropy"] <= math.log(10)
    plots = {p.name for p in (run_dir / "plots").iterdir()}
    assert {"samples_0000002.png", "chains_0000002.png", "metrics.png"} <= plots
    x = torch.load(run_dir / "samples.pt")
    assert x.shape == (64, 64) and x.abs().max() <= 1  # chains stay in the pixel box


def test_2d_plots_are_the_landscape_and_the_chains(tmp_path):
    run_dir = tmp_path / "run"
    train(ebm_cfg(run_dir, "data=8gaussians", "trainer.max_steps=3", "eval.plots=true"))
    assert {"samples_0000003.png", "chains_0000003.png"} <= {p.name for p in (run_dir / "plots").iterdir()}
    assert "kl_true" in json.loads((run_dir / "metrics.json").read_text())  # 8gaussians: the true density is known


@pytest.mark.parametrize("negatives", ["langevin", "gfn"])
def test_sigterm_checkpoints_and_the_same_command_resumes_bit_for_bit(
    tmp_path, capsys, monkeypatch, negatives, default_handlers
):
    net = f"ebm.net._target_={__name__}.SignalingMLP"
    extra = [net, *(GFN + ["buffer=rank", "train.phases=both_ways", "train.backward_source=buffer"]
                    if negatives == "gfn" else [])]  # fmt: skip
    reference, _ = train(ebm_cfg(tmp_path / "uninterrupted", *extra))

    run_dir = tmp_path / "interrupted"
    monkeypatch.setenv("EBM_SIGNAL", "SIGTERM@5")
    status, err = exit_of(ebm_cfg(run_dir, *extra), capsys)
    assert status == 143 and err[-1].startswith("error: terminated by SIGTERM at step 5; checkpoint saved")
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
    assert not (run_dir / "metrics.json").exists()
    monkeypatch.delenv("EBM_SIGNAL")

    resumed, _ = train(ebm_cfg(run_dir, *extra))
    assert resumed == reference
    a, b = tmp_path / "uninterrupted", run_dir
    assert rows_without_timing(a / "metrics.csv") == rows_without_timing(b / "metrics.csv")
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    if negatives == "gfn":
        assert any(k.startswith("gfn.") for k in wa)


@pytest.fixture
def default_handlers():
    """SIGTERM's default handler, as a fresh `python scripts/train.py` starts with; restored afterwards."""
    saved = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, saved)


def test_a_non_finite_loss_stops_the_run_with_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "run"
    status, err = exit_of(ebm_cfg(run_dir, f"ebm.net._target_={__name__}.NaNFromStep4"), capsys)
    assert status == 1 and len(err) == 1
    assert err[0].startswith("error: non-finite EBM loss at step 3: 32 of 32 energies are NaN/inf")
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert not (run_dir / "metrics.json").exists()


# ------------------------------------------------------------------------------------------------- bad input
def _npy(tmp_path: Path, shape) -> Path:
    path = tmp_path / "points.npy"
    np.save(path, np.zeros(shape, dtype=np.float32))
    return path


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["energy=funnel"], "energy (_target_=sampler.energies.Funnel) does not apply to task=ebm"),
        (["ebm.langevin.n_steps=0"], "ebm.langevin.n_steps must be an integer ≥ 1 (got 0)"),
        (["ebm.langevin.step_size=0"], "ebm.langevin.step_size must be a finite number > 0 (got 0)"),
        (["ebm.langevin.step_size=nan"], "ebm.langevin.step_size must be a finite number > 0 (got nan)"),
        (["ebm.buffer.reinit_prob=1.5"], "ebm.buffer.reinit_prob must be a number in [0, 1] (got 1.5)"),
        (["ebm.buffer.capacity=8"], "ebm.buffer.capacity=8 holds fewer chains than a batch draws"),
        (["ebm.negatives=mcmc"], "ebm.negatives=mcmc is not an option; choose one of: langevin, gfn"),
        (["+ebm.langevin.steps=3"], "ebm.langevin.steps is not a key of ebm.langevin"),
        (["ebm.generate.method=gfn"], "ebm.generate.method=gfn samples the GFN negative sampler"),
        (["ebm.langevin.persistent=false", "ebm.generate.method=buffer"], "continues the PCD chains"),
        (["ebm/net=cnn"], "ebm.net._target_=sampler.ebm.nets.CNNEnergy takes images, and data=moons holds"),
        (["data=array"], "data.path is required by data._target_=sampler.ebm.data.ArrayData"),
        (["data=array", "data.path=FILE3D"], "must hold an [N, d] array with N ≥ 2 (got (5, 2, 2))"),
        (["data=array", "data.path=/nonexistent.npy"], "data file /nonexistent.npy does not exist"),
        (["data=custom"], "data=custom needs data._target_=my.module.MyData"),
        ([*GFN, "train.phases=both_ways"], "with train.backward_source=exact needs exact samples of the target"),
        ([*GFN, "teacher=adaptive"], "ebm.negatives=gfn cannot train with a teacher"),
        ([*GFN, "model._target_=sampler.ebm.nets.MLPEnergy"], "model._target_=sampler.ebm.nets.MLPEnergy is not one"),
        ([*GFN, "loss=fl_subtb", "model.flow=scalar"], "loss=fl_subtb needs model.flow in"),  # the sampler's checks
        (["trainer.precision=16-mixed"], "trainer.precision=16-mixed is not supported"),
        (["train.lr_milestones=[100]"], "train.lr_milestones=[100] is not read by task=ebm"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, overrides, message):
    overrides = [o.replace("FILE3D", str(_npy(tmp_path, (5, 2, 2)))) for o in overrides]
    run_dir = tmp_path / "run"
    status, err = exit_of(ebm_cfg(run_dir, *overrides), capsys)
    assert status == 2 and len(err) == 1 and message in err[0], err
    assert not run_dir.exists()


def test_a_users_array_file_trains(tmp_path):
    x = np.random.default_rng(0).normal(size=(120, 3)).astype(np.float32)
    np.save(tmp_path / "mine.npy", x)
    run_dir = tmp_path / "run"
    metrics, _ = train(ebm_cfg(run_dir, "data=array", f"data.path={tmp_path / 'mine.npy'}", "trainer.max_steps=3"))
    # three dimensions: log Z by AIS, no quadrature and no true density
    assert set(metrics) == (set(TOY_KEYS) - {"kl_true"}) | {"step"} and math.isfinite(metrics["nll_test"])


def test_a_users_data_class_trains_and_its_samples_need_it_trusted(tmp_path):
    run_dir = tmp_path / "run"
    overrides = ["data=custom", f"data._target_={__name__}.Square", "+data.n=120", "trainer.max_steps=3"]
    metrics, _ = train(ebm_cfg(run_dir, *overrides))
    assert math.isfinite(metrics["nll_test"]) and "kl_true" not in metrics
    argv = [f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "n=10", f"out={tmp_path / 'x.pt'}"]
    with pytest.raises(UsageError, match=f"data._target_={__name__}.Square is not one of the platform's classes"):
        script("sample")(argv)
    assert script("sample")([*argv, f"trust={__name__}.Square"]) == 0


# ------------------------------------------------------------------------------------------------- GFN negatives
def test_gfn_negatives_train_the_platform_gfn_and_count_its_energy_calls(tmp_path):
    from sampler.ebm.config import check_ebm_config
    from sampler.ebm.module import EBMModule, PerEBMStep

    cfg = ebm_cfg(tmp_path / "run", *GFN, "ebm.gfn.steps_per_ebm_step=2", "buffer=rank")
    check_ebm_config(cfg)
    assert cfg.ebm.generate.method == "gfn" and cfg.train.lr_flow == 0.1  # recorded defaults
    module = EBMModule(cfg)
    assert module.gfn.energy.net is module.net and module.offpolicy is not None
    assert isinstance(module.recipe.negatives.recipe.exploration, PerEBMStep)
    opt = torch.optim.Adam(module.net.parameters(), lr=1e-3)
    module.train_step(0, opt)
    s = module.stats
    assert s["gfn_steps"] == 2 and math.isfinite(s["gfn_loss"])
    # two GFN steps on 16 trajectories of T=10 with the Langevin term (∇E at 10 states, the reward at the last),
    # then 16 negatives the same way
    assert s["n_energy_calls"] == s["n_energy_calls_gfn"] == 3 * 16 * (10 + 1)
    assert module.offpolicy.stats()["buffer_size"] == 32  # the GFN's replay buffer holds its two batches


def test_exploration_of_the_gfn_is_read_in_ebm_steps():
    from sampler.ebm.module import PerEBMStep

    schedule = PerEBMStep(lambda step: step, 3)
    assert [schedule(s) for s in range(7)] == [0, 0, 0, 1, 1, 1, 2]


# ------------------------------------------------------------------------------------------------- the scripts
def test_sample_script_generates_by_each_method_and_refuses_what_the_model_cannot(pcd_run, tmp_path, capsys):
    sample = script("sample")
    ckpt = pcd_run[0] / "checkpoints" / "last.ckpt"
    for method in ("noise", "buffer", "annealed"):
        out = tmp_path / f"{method}.npy"
        assert sample([f"ckpt={ckpt}", "n=150", f"out={out}", f"method={method}", "steps=4", "batch=100"]) == 0
        x = np.load(out)
        assert x.shape == (150, 2) and np.isfinite(x).all()
    assert "wrote 150 samples of dimension 2 from step 6" in capsys.readouterr().out
    # a batch larger than the buffer: each call continues at most 64 chains, and all 150 rows are filled
    assert sample([f"ckpt={ckpt}", "n=150", f"out={tmp_path / 'b.pt'}", "method=buffer", "batch=1000"]) == 0
    assert torch.isfinite(torch.load(tmp_path / "b.pt")).all()
    for args, message in [
        (["method=gfn"], "method=gfn samples the GFN negative sampler: it needs ebm.negatives=gfn"),
        (["method=mcmc"], "method=mcmc is not a generation method; choose one of: noise, buffer, annealed, gfn"),
        (["steps=0"], "steps must be an integer ≥ 1 (got '0')"),
    ]:
        with pytest.raises(UsageError) as err:
            sample([f"ckpt={ckpt}", "n=5", f"out={tmp_path / 'x.pt'}", *args])
        assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "x.pt").exists()


def test_sample_script_refuses_ebm_arguments_for_a_sampler_checkpoint(tmp_path):
    run_dir = tmp_path / "sampler"
    train(compose_cfg([*TINY, "energy=gaussian"], run_dir))
    with pytest.raises(UsageError) as err:
        script("sample")([f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "n=5", f"out={tmp_path / 'x.pt'}",
                          "method=annealed"])  # fmt: skip
    assert str(err.value).startswith("method= is for energy-based models (task=ebm runs)")


def test_re_evaluating_the_last_checkpoint_reproduces_metrics_json(pcd_run):
    from sampler.training.callbacks import run_evaluation
    from sampler.training.loading import load_module

    run_dir, metrics = pcd_run
    module, cfg, step = load_module(run_dir / "checkpoints" / "last.ckpt")
    again, samples = run_evaluation(module, step, int(cfg.eval.K))
    again.pop("eval_s")
    assert again == metrics and torch.equal(samples, torch.load(run_dir / "samples.pt"))


def test_summarize_diff_and_reproduce_work_on_ebm_run_directories(pcd_run, tmp_path, capsys):
    run_dir, metrics = pcd_run
    other = tmp_path / "other"
    train(ebm_cfg(other, "ebm.alpha=0.1"))
    assert script("diff_runs")([str(run_dir), str(other)]) == 1
    out = capsys.readouterr().out
    assert "ebm.alpha" in out and "nll_test" in out
    assert script("summarize")([str(run_dir), "--metrics", "nll_test", "mmd"]) == 0
    assert f"{metrics['nll_test']:.3f}" in capsys.readouterr().out
    from sampler.analysis.reproduce import reproduce

    result = reproduce(run_dir, tmp_path / "repro")
    assert result.all_match and {r.key for r in result.rows} == set(metrics)


def test_the_scripts_say_an_ebm_group_needs_task_ebm():
    for group in ("data=moons", "ebm/net=cnn"):
        proc = subprocess.run(
            [sys.executable, "scripts/train.py", group], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 2
        name = group.split("=")[0]
        assert proc.stderr.strip() == f"error: {name}= selects a group of energy-based models: add task=ebm"


def test_eval_script_re_evaluates_an_ebm_checkpoint(pcd_run, tmp_path):
    run_dir, metrics = pcd_run
    out = tmp_path / "eval.json"
    proc = subprocess.run(
        [sys.executable, "scripts/eval.py", f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", f"out={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads(out.read_text())
    assert again["nll_test"] == metrics["nll_test"] and again["mmd"] == metrics["mmd"]

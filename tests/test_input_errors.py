"""Bad input stops before training with one line naming the problem: plug-in energies whose outputs break the
protocol's shapes, Trainer settings the sampler cannot train under, NaN or ±inf values, and command lines whose
config does not compose (a misspelt key, an unknown option)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TINY

import sampler.training.module as module
from sampler.app.composition import composition_error
from sampler.energies import ENERGIES, Energy
from sampler.energies.protocol import check_energy
from sampler.exploration import Constant, CosineDecay, ExponentialDecay, LinearDecay
from sampler.training.config_check import ConfigError
from sampler.training.run import train

PY = sys.executable


# ------------------------------------------------------------------------------------------- plug-in energies
class Quadratic(Energy):
    """A valid plug-in target, N(0, I) up to a constant; the broken ones below change one output."""

    dim = 2

    def log_reward(self, x):
        return -0.5 * x.pow(2).sum(-1)


class ColumnOutput(Quadratic):
    def log_reward(self, x):
        return -0.5 * x.pow(2).sum(-1, keepdim=True)  # [B, 1]: every loss would broadcast to [B, B]


class AnyDim(Quadratic):
    def __init__(self, dim=2):
        super().__init__()
        self.dim = dim


class FlatGradient(Quadratic):
    def log_reward_and_grad(self, x):
        return self.log_reward(x), -x.sum(-1)  # [B]


class GradientOnly(Quadratic):
    def log_reward_and_grad(self, x):
        return -x


class FlatSampler(Quadratic):
    def sample(self, n, generator=None):
        return torch.randn(n, generator=generator)  # [n]


class WrongCentres(Quadratic):
    @property
    def mode_centres(self):
        return torch.zeros(2, 3)


class IntegerReward(Quadratic):
    def log_reward(self, x):
        return x.sum(-1).round().long()


class ElsewhereReward(Quadratic):
    def log_reward(self, x):
        return super().log_reward(x).to("meta")


class ListReward(Quadratic):
    def log_reward(self, x):
        return super().log_reward(x).tolist()


class RaisingReward(Quadratic):
    def log_reward(self, x):
        raise RuntimeError("the simulator is not configured")


class Supported(Quadratic):
    """-inf outside the disc of radius 0.1, which holds none of the probe points: allowed."""

    def log_reward(self, x):
        lr = super().log_reward(x)
        return torch.where(x.norm(dim=-1) < 0.1, lr, torch.full_like(lr, -float("inf")))


@pytest.mark.parametrize("name", sorted(ENERGIES))
def test_every_builtin_energy_keeps_the_protocol_without_touching_the_global_rng(name):
    energy = ENERGIES[name](dim=4) if name == "manywell" else ENERGIES[name]()
    torch.manual_seed(7)
    before = torch.get_rng_state()
    check_energy(energy, name)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize(
    "energy, message",
    [
        (ColumnOutput(), "log_reward returned shape [3, 1]; expected [3] (one log-reward per row of x [3, 2])"),
        (AnyDim(0), "dim must be a positive integer (got 0)"),
        (AnyDim(-2), "dim must be a positive integer (got -2)"),
        (AnyDim(2.0), "dim must be a positive integer (got 2.0)"),
        (FlatGradient(), "log_reward_and_grad returned shape [3] for ∇log r; expected [3, 2] (the shape of x)"),
        (GradientOnly(), "log_reward_and_grad returned Tensor; expected a pair (log r [3], ∇log r [3, 2])"),
        (FlatSampler(), "sample returned shape [3]; expected [3, 2] (3 points of dim 2)"),
        (WrongCentres(), "mode_centres is [2, 3]; expected [M, 2] (one row per mode, M ≥ 1) or None"),
        (IntegerReward(), "log_reward returned dtype torch.int64; expected a floating dtype"),
        (ElsewhereReward(), "log_reward returned a tensor on meta; expected one on cpu"),
        (ListReward(), "log_reward returned list; expected a torch.Tensor of shape [3]"),
        (RaisingReward(), "log_reward failed on a probe batch: RuntimeError: the simulator is not configured"),
    ],
)
def test_a_broken_energy_is_one_line_naming_target_method_and_shapes(energy, message):
    with pytest.raises(ConfigError) as err:
        check_energy(energy, "my.Target")
    assert str(err.value).startswith(f"energy._target_=my.Target: {message}"), str(err.value)
    assert "\n" not in str(err.value)


def test_non_finite_log_rewards_at_the_probe_points_are_allowed():
    assert not torch.isfinite(
        Supported().log_reward(torch.randn(3, 2, generator=torch.Generator().manual_seed(0)))
    ).any()
    check_energy(Supported(), "my.Supported")
    check_energy(Quadratic(), "my.Quadratic")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ([f"energy._target_={__name__}.ColumnOutput"], "log_reward returned shape [3, 1]; expected [3]"),
        ([f"energy._target_={__name__}.AnyDim", "+energy.dim=0"], "dim must be a positive integer (got 0)"),
    ],
)
def test_a_broken_plugin_energy_stops_the_run_before_training(tiny_cfg, tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        train(tiny_cfg(*overrides, "model.t_scale=1.0", run_dir=tmp_path / "bad"))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "bad" / "checkpoints").exists() and not (tmp_path / "bad" / "metrics.json").exists()


def test_checking_the_energy_leaves_a_seeded_run_bit_identical(tiny_cfg, tmp_path, monkeypatch):
    # The probe draws from its own generator: the model initialisation that follows reads the same global RNG.
    plain, _ = train(tiny_cfg("energy=gmm9", run_dir=tmp_path / "plain"))
    build = module.build_energy

    def checked_again(cfg):
        energy = build(cfg)
        check_energy(energy, "gmm9")
        return energy

    monkeypatch.setattr(module, "build_energy", checked_again)
    checked, _ = train(tiny_cfg("energy=gmm9", run_dir=tmp_path / "checked"))
    assert checked == plain


# --------------------------------------------------------------------------------------------- config values
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trainer.precision=bf16-mixed"], "trainer.precision=bf16-mixed is not supported"),
        (["trainer.precision=16-mixed"], "trainer.precision=16-mixed is not supported"),
        (["trainer.precision=64-true"], "choose one of: 32-true, 32"),
        (["trainer.precision=bf16-true"], "the sampler computes in float32"),
        (["trainer.devices=2"], "trainer.devices=2 selects 2 devices, but the sampler trains on one device"),
        (["trainer.devices=0"], "trainer.devices=0 selects no device here; use trainer.devices=1"),
        (["+trainer.num_nodes=2"], "trainer.num_nodes=2: the sampler trains on one device"),
        (["+trainer.strategy=ddp"], "trainer.strategy=ddp is not supported"),
        (["trainer.devices=2"], "run several seeds at once: python scripts/train.py -m seed=0,1,2,3"),
        (["train.lr_policy=nan"], "train.lr_policy=nan: NaN is never a meaningful setting; give a number"),
        (["exploration=linear", "exploration.start=nan"], "exploration.start=nan: NaN is never a meaningful"),
        (["train.lr_milestones=[2,nan]"], "train.lr_milestones[1]=nan: NaN"),
        (["energy=gaussian", "energy.std=[1.0,nan]"], "energy.std[1]=nan: NaN"),
        (["train.lr_policy=inf"], "train.lr_policy must be a finite positive number (got inf)"),
        (["loss.lam=-inf"], "loss.lam must be a finite positive number (got -inf)"),
        (["train.grad_clip=inf"], "train.grad_clip must be a finite positive number (got inf)"),
        (["model.t_scale=inf"], "model.t_scale must be a finite positive number (got inf)"),
        (["train.weight_decay=inf"], "train.weight_decay must be a finite non-negative number (got inf)"),
        (["exploration=constant", "exploration.start=inf"], "exploration.start must be a finite number >= 0 (got inf)"),
        (["exploration=linear", "exploration.horizon=2.5"], "exploration.horizon must be a positive whole number"),
        (["exploration=exponential", "exploration.rate=inf"], "exploration.rate must be a finite number > 0 (got inf)"),
    ],
)
def test_values_that_cannot_train_fail_before_training_with_one_line(tiny_cfg, tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        train(tiny_cfg(*overrides, run_dir=tmp_path / "bad"))
    assert message in str(err.value), str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "bad").exists()


def test_precision_32_is_32_true(tiny_cfg, tmp_path):
    a, _ = train(tiny_cfg("trainer.precision=32", run_dir=tmp_path / "a"))
    b, _ = train(tiny_cfg("trainer.precision=32-true", run_dir=tmp_path / "b"))
    assert a == b


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Constant(start=float("nan")), "exploration.start must be a finite number >= 0 (got nan)"),
        (lambda: LinearDecay(start=0.2, horizon=float("inf")), "exploration.horizon must be a positive whole number"),
        (lambda: CosineDecay(start=0.2, horizon=float("nan")), "exploration.horizon must be a positive whole number"),
        (lambda: CosineDecay(start=-0.1, horizon=10), "exploration.start must be a finite number >= 0 (got -0.1)"),
        (lambda: LinearDecay(start="0.2", horizon=10), "exploration.start must be a finite number >= 0 (got '0.2')"),
        (lambda: LinearDecay(start=True, horizon=10), "exploration.start must be a finite number >= 0 (got True)"),
        (lambda: ExponentialDecay(start=0.2, horizon=10, rate=float("nan")), "exploration.rate must be a finite"),
    ],
)
def test_schedules_reject_numbers_that_would_silently_change_exploration(make, message):
    with pytest.raises(ValueError) as err:
        make()
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_schedules_accept_a_whole_float_horizon():
    assert LinearDecay(start=0.2, horizon=10.0).horizon == 10 and LinearDecay(start=0.2, horizon=10.0)(5) == 0.1


# ------------------------------------------------------------------------------------------- composing (Hydra)
@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["model.hidden_dimm=3"],
            "model.hidden_dimm is not a config key; did you mean model.hidden_dim? "
            "(to add a new key write +model.hidden_dimm=3)",
        ),
        (["model.foo.bar=3"], "model.foo.bar is not a config key (to add a new key write +model.foo.bar=3)"),
        (["energyy=gmm9"], "energyy is not a config key; did you mean energy? (to add a new key write +energyy=gmm9)"),
        (
            ["loss=nonexistent"],
            "loss=nonexistent is not an option; choose one of: db, fl_subtb, mle, pis, subtb, tb, tb_avg, vargrad",
        ),
        (["hydra/launcher=nope"], "hydra/launcher=nope is not an option; choose one of: basic, submitit_local"),
        (["-m", "seed=0,1", "loss=tb,nonexistent"], "loss=nonexistent is not an option; choose one of: db,"),
        (["energy=gmm9,funnel", "-m", "model.hidden_dimm=2"], "model.hidden_dimm is not a config key"),
        (["seed=0,1"], "seed=0,1 has several values: add -m to run one job per value, or write seed=[0,1] for a list"),
        (["seed=range(0,3)"], "seed=range(0,3) is a sweep: add -m to run one job per value"),
        (["+model.T=3"], "+model.T=3 adds model.T, which exists: write model.T=3 to set it"),
        (["model.T=[1,2"], "cannot parse the override model.T=[1,2: "),
        (["-m", "hydra.run.dir=a,b"], "hydra.run.dir=a,b: Hydra cannot sweep over its own configuration"),
        (["launcher=null"], "launcher=null: a config group takes one of its options (local, slurm, slurm_gpu)"),
        (["hydra.job.chdir=maybe"], "Error merging override hydra.job.chdir=maybe: Value 'maybe' is not a valid bool"),
    ],
)
def test_a_command_line_that_does_not_compose_is_one_line(argv, message):
    error = composition_error(argv)
    assert error is not None and error.startswith(f"error: {message}"), error
    assert "\n" not in error


@pytest.mark.parametrize(
    "argv",
    [
        ["trainer.max_steps=2", "model.T=5", "hydra.run.dir=/tmp/somewhere"],
        ["-m", "experiment=tb,tb_expl_ls", "energy=gmm25,funnel", "seed=0,1,2"],
        ["launcher=local", "-m", "seed=range(0,2)", "hydra.launcher.timeout_min=5"],
        ["-m", "loss=glob(*)", "+train.bach_size=3"],  # composes; check_config rejects the key when the job runs
        ["--cfg", "job", "model.hidden_dimm=3"],  # an info flag: left to Hydra
        ["-cn", "other", "model.hidden_dimm=3"],  # another primary config: left to Hydra
    ],
)
def test_command_lines_that_compose_or_that_hydra_reports_pass(argv):
    assert composition_error(argv) is None


# ---------------------------------------------------------------------------------------- scripts/train.py
def run_train(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, "scripts/train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
    )


@pytest.mark.parametrize(
    "override, line",
    [
        (
            "model.hidden_dimm=3",
            "error: model.hidden_dimm is not a config key; did you mean model.hidden_dim? "
            "(to add a new key write +model.hidden_dimm=3)",
        ),
        (
            "loss=nonexistent",
            "error: loss=nonexistent is not an option; choose one of: db, fl_subtb, mle, pis, subtb, tb, tb_avg, "
            "vargrad",
        ),
        (
            "trainer.precision=bf16-mixed",
            "error: trainer.precision=bf16-mixed is not supported: the sampler computes in float32 (mixed, 16- and "
            "64-bit precision break its kernels and buffers); choose one of: 32-true, 32",
        ),
        ("trainer.devices=2", "error: trainer.devices=2 selects 2 devices, but the sampler trains on one device"),
        ("train.lr_policy=nan", "error: train.lr_policy=nan: NaN is never a meaningful setting; give a number"),
    ],
)
def test_the_script_prints_one_line_and_exits_2(tmp_path, override, line):
    proc = run_train(*TINY, override, f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stderr
    (printed,) = proc.stderr.splitlines()
    assert printed.startswith(line), printed
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_plugin_energy_with_column_output_is_one_line_from_the_script(tmp_path):
    (tmp_path / "my_ring.py").write_text(
        "import torch\n"
        "from sampler.energies import Energy\n\n\n"
        "class Ring(Energy):\n"
        "    dim = 2\n\n"
        "    def log_reward(self, x):\n"
        "        return -(x.norm(dim=-1, keepdim=True) - 2.0).pow(2)  # [B, 1]\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    run = tmp_path / "run"
    args = [*TINY, "energy._target_=my_ring.Ring", "model.t_scale=1.0", f"hydra.run.dir={run}"]
    proc = subprocess.run(
        [PY, "scripts/train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "error: energy._target_=my_ring.Ring: log_reward returned shape [3, 1]; expected [3] "
        "(one log-reward per row of x [3, 2])"
    ]
    assert not (run / "checkpoints").exists() and not (run / "metrics.json").exists()


SWEEP = [*TINY, "trainer.max_steps=2", "model.T=5", "eval.K=16", "eval.every=2", "checkpoint.every=2"]


def test_a_good_sweep_still_starts(tmp_path):
    proc = run_train("-m", "seed=0,1", *SWEEP, f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.parent.name for p in tmp_path.rglob("metrics.json")) == ["seed=0", "seed=1"]


@pytest.mark.slow
def test_a_local_launcher_sweep_still_starts(tmp_path):
    proc = run_train("launcher=local", "-m", "seed=0", *SWEEP, f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.parent.name for p in tmp_path.rglob("metrics.json")] == ["seed=0"]

"""Discrete targets through the platform's entry point: `scripts/train.py energy=hypergrid|deceptive_grid ...` selects
the discrete GFN by itself, trains with the shared objectives and off-policy options, writes the run directory of a
continuous run (exact and empirical metrics in metrics.json, heat maps) and resumes bit for bit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg
from hydra.errors import HydraException

from sampler.training.checkpointing import load_checkpoint
from sampler.training.config_check import ConfigError
from sampler.training.run import train

ROOT = Path(__file__).resolve().parents[1]

#: A 6×6 hypergrid and a small network: a run takes a second or two.
DTINY = [
    "energy=hypergrid",
    "energy.height=6",
    "model.hidden_dim=32",
    "train.batch_size=8",
    "trainer.max_steps=6",
    "eval.every=6",
    "eval.K=200",
    "eval.plots=false",
    "checkpoint.every=3",
    "trainer.enable_progress_bar=false",
]
METRIC_KEYS = (
    "l1_exact kl_exact jsd_exact l1_empirical l1_empirical_mean n_empirical modes_found modes_total n_trajectories "
    "log_Z_learned log_Z"
).split()


def cfg(tmp_path, *overrides, name="run"):
    return compose_cfg(DTINY + list(overrides), tmp_path / name)


def test_a_discrete_target_selects_the_discrete_model_and_its_own_defaults():
    c = compose_cfg(["energy=hypergrid"])
    assert c.model._target_ == "sampler.discrete.DiscreteGFN" and c.model.hidden_dim == 256 and c.model.num_layers == 2
    assert c.exploration._target_ == "sampler.exploration.ExplorationSchedule"  # on-policy
    assert (c.energy.ndim, c.energy.height, c.energy.R0) == (2, 16, 0.01)
    assert (c.train.batch_size, c.train.lr_policy, c.train.lr_flow, c.train.lr_gamma) == (16, 2e-3, 0.1, 0.25)
    assert list(c.train.lr_milestones) == [1000, 1500] and c.trainer.max_steps == 2000
    c = compose_cfg(["energy=deceptive_grid", "loss=db", "exploration=constant"])
    assert c.model.flow == "conditional" and c.train.grad_clip == 1.0 and c.energy.height == 64
    assert c.exploration._target_ == "sampler.exploration.Constant"  # the command line wins over the target's default
    c = compose_cfg(["energy=gmm25"])  # continuous targets keep the root defaults
    assert c.model._target_ == "sampler.gfn.DiffusionGFN" and c.train.batch_size == 300


def test_a_hypergrid_run_writes_the_exact_metrics_plots_and_samples(tmp_path):
    run = tmp_path / "run"
    metrics, objects = train(cfg(tmp_path, "eval.plots=true", "eval.every=3"))
    for key in METRIC_KEYS:
        assert key in metrics, key
    assert metrics["modes_total"] == 16 and metrics["n_empirical"] == 200  # H = 6: no R2 band, 4 × 4 R1 corners
    assert metrics["n_trajectories"] == 6 * 8 == metrics["n_energy_calls"]
    assert 0.0 <= metrics["l1_exact"] <= 2.0 and metrics["kl_exact"] >= 0.0
    env = objects["module"].energy
    assert metrics["log_Z"] == pytest.approx(float(env.log_Z))
    assert json.loads((run / "metrics.json").read_text()) == metrics
    rows = (run / "metrics.csv").read_text().splitlines()
    assert "l1_exact" in rows[0] and sum(",eval," in r for r in rows) == 2
    for name in ("samples_0000003.png", "samples_0000006.png", "modes_found.png", "metrics.png"):
        assert (run / "plots" / name).is_file(), name
    samples = torch.load(run / "samples.pt")
    assert samples.shape == (200, 2) and bool((samples == samples.round()).all())


@pytest.mark.parametrize(
    "extra",
    [
        ["loss=db"],
        ["loss=subtb"],
        ["loss=vargrad"],
        ["model.pb=learned", "train.phases=both_ways"],
        ["teacher=adaptive", "buffer=per", "train.backward_source=buffer"],
        ["buffer=per", "train.phases=both_ways", "train.backward_source=buffer"],
        ["buffer=reward", "train.phases=both_ways", "train.backward_source=buffer"],
        ["buffer=rank", "train.phases=both_ways", "train.backward_source=local_search", "local_search=back_and_forth"],
        ["intrinsic=gafn"],
        ["exploration=constant", "exploration.start=0.1"],
        ["energy=deceptive_grid", "energy.height=8"],
        ["energy.ndim=3", "energy.height=4", "loss=db"],
    ],
    ids=lambda a: " ".join(a),
)
def test_every_objective_and_off_policy_option_trains_and_resumes_bit_for_bit(tmp_path, extra):
    args = [*extra, "energy.height=6"] if "energy.height=8" not in extra and "energy.height=4" not in extra else extra
    a, b = tmp_path / "a", tmp_path / "b"
    metrics_a, _ = train(compose_cfg(DTINY + args, a))
    train(compose_cfg(DTINY + args, b))
    ckpts = b / "checkpoints"  # as if killed after its step-3 checkpoint
    shutil.copy(ckpts / "previous.ckpt", ckpts / "last.ckpt")
    (b / "metrics.json").unlink()
    assert load_checkpoint(ckpts / "last.ckpt")["global_step"] == 3
    metrics_b, _ = train(compose_cfg(DTINY + args, b))
    assert metrics_a == metrics_b
    sa, sb = load_checkpoint(a / "checkpoints" / "last.ckpt"), load_checkpoint(ckpts / "last.ckpt")
    for k in sa["state_dict"]:
        assert torch.equal(sa["state_dict"][k], sb["state_dict"][k]), k
    assert torch.equal(sa["sampler_state"]["modes"]["found"], sb["sampler_state"]["modes"]["found"])


def test_the_teacher_and_gafn_train_what_they_should(tmp_path):
    _, objects = train(cfg(tmp_path, "teacher=adaptive", "buffer=per", "train.backward_source=buffer"))
    module = objects["module"]
    assert type(module.teacher_gfn).__name__ == "DiscreteGFN" and module.teacher_gfn.flow_type == "scalar"
    assert module.recipe.phase_counts.get("teacher", 0) + module.recipe.phase_counts.get("replay", 0) > 0
    _, objects = train(cfg(tmp_path, "intrinsic=gafn", "intrinsic.scale=0.25", name="gafn"))
    module = objects["module"]
    groups = {g["name"] for g in objects["trainer"].optimizers[0].param_groups}
    assert {"gafn_rnd", "gafn_flow"} <= groups and module.intrinsic.scale == 0.25
    state = load_checkpoint(tmp_path / "gafn" / "checkpoints" / "last.ckpt")["state_dict"]
    assert any(k.startswith("intrinsic.rnd.predictor") for k in state)


def test_the_discrete_teacher_reward_uses_the_full_square():
    from sampler.adaptive_teacher import square_coefficient, teacher_reward

    delta, log_r = torch.tensor([-2.0, 1.0]), torch.zeros(2)
    assert torch.allclose(teacher_reward(delta, log_r, None, square=1.0), torch.log1p(1e-3 + torch.tensor([80.0, 1.0])))
    grid = compose_cfg(DTINY)
    from sampler.training.module import build_energy, build_gfn

    env = build_energy(grid)
    assert square_coefficient(build_gfn(grid, env)) == 1.0
    assert square_coefficient(torch.nn.Linear(1, 1)) == 0.5


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model=lp"], "is a discrete target, but model._target_=sampler.gfn.DiffusionGFN samples continuous ones"),
        (["local_search=mala"], "local_search._target_=sampler.local_search.MALA moves continuous states"),
        (["loss=fl_subtb"], "loss.name=fl_subtb is an objective of continuous targets; with energy._target_="),
        (["loss=db", "model.flow=scalar"], "loss.name=db needs model.flow in {conditional} (got scalar)"),
        (["energy.height=0"], "energy.height must be a whole number >= 2 (got 0)"),
        (["energy.ndim=0"], "energy.ndim must be a whole number >= 1 (got 0)"),
        (["energy.R0=0"], "energy.R0 must be a finite number > 0 (got 0"),
        (["energy.ndim=8", "energy.height=16"], "set energy.exact=false to switch them off"),
        (["train.batch_size=0"], "train.batch_size must be a positive integer (got 0)"),
        (["model.temperature=-1"], "model.temperature must be a positive"),
    ],
)
def test_bad_discrete_input_is_one_line_and_writes_nothing(tmp_path, overrides, message):
    with pytest.raises((ConfigError, HydraException)) as err:
        train(cfg(tmp_path, *overrides))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_a_continuous_target_refuses_the_discrete_options(tmp_path):
    with pytest.raises(ConfigError, match="samples discrete targets, but energy._target_=sampler.energies.GMM25"):
        train(compose_cfg(["model=discrete"], tmp_path / "r"))
    with pytest.raises(ConfigError, match="augments discrete trajectories"):
        train(compose_cfg(["intrinsic=gafn"], tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_the_script_trains_a_hypergrid_and_the_analysis_scripts_read_it(tmp_path):
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    run = tmp_path / "run"

    def script(*args, status=0):
        proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == status, proc.stderr[-2000:]
        return proc.stdout

    script("scripts/train.py", *DTINY, f"paths.run_dir={run}")
    assert "l1_exact" in script("scripts/summarize.py", str(run))
    other = tmp_path / "other"
    script("scripts/train.py", *DTINY, "loss=db", f"paths.run_dir={other}")
    diff = script("scripts/diff_runs.py", str(run), str(other), status=1)  # 1: the runs differ, as diff(1) says
    assert "loss.name" in diff and "l1_exact" in diff
    proc = subprocess.run(
        [sys.executable, "scripts/train.py", *DTINY, "model=lp", f"paths.run_dir={tmp_path / 'bad'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")


def test_the_readme_discrete_block_trains_without_hydra_or_lightning():
    import re

    from sampler.discrete import DiscreteGFN, HyperGrid, exact_terminal_distribution

    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- test:discrete-example -->\n```python\n(.*?)```", text, re.S).group(1)
    assert "hydra" not in block and "lightning" not in block
    torch.manual_seed(0)
    scope = {"__name__": "readme_discrete"}
    exec(block.replace("range(2000)", "range(300)"), scope)  # noqa: S102
    env = HyperGrid(ndim=2, height=16, R0=1e-2)
    pi = env.target_probs()
    torch.manual_seed(0)
    untrained = float((exact_terminal_distribution(DiscreteGFN(env)) - pi).abs().sum())
    trained = float((exact_terminal_distribution(scope["gfn"]) - pi).abs().sum())
    assert trained < 0.5 * untrained, (trained, untrained)
    assert scope["s"].shape == (16, 2) and scope["log"].fwd_log_probs.shape[0] == 16


def test_wandb_offline_files_hold_a_discrete_run_s_metrics(tmp_path):
    import os

    from test_loggers import wandb_records

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(NETRC=str(tmp_path / "no-netrc"), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    run = tmp_path / "run"
    cmd = [sys.executable, "scripts/train.py", "logger=wandb", *DTINY, f"paths.run_dir={run}"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    final = json.loads((run / "metrics.json").read_text())
    (log_file,) = next((run / "wandb").glob("offline-run-*")).glob("run-*.wandb")
    history: dict[int, dict] = {}
    for r in wandb_records(log_file):
        if r.WhichOneof("record_type") == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            history.setdefault(int(r.history.step.num), {}).update(row)
    assert history[6]["eval/l1_exact"] == pytest.approx(final["l1_exact"], rel=1e-12)
    assert history[6]["eval/modes_found_train"] == final["modes_found_train"]

"""Off-policy training in the platform (docs/spec.md §5–§7): buffers fed by forward steps and replayed by backward
steps, local search, the adaptive teacher's schedule, the paper presets, and that all of it survives a resume."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch

from sampler.training.checkpointing import load_checkpoint
from sampler.training.config_check import ConfigError
from sampler.training.run import train

SENDERA = [
    "tb",
    "tb_expl",
    "vargrad_expl",
    "fl_subtb",
    "fl_subtb_lp",
    "tb_expl_ls",
    "tb_expl_lp",
    "tb_expl_lp_ls",
    "vargrad_expl_lp_ls",
    "pis",
    "pis_lp",
]
TEACHERS = ["at_onpolicy", "at_per", "at_teacher"]
SMALL_LS = ["local_search.n_steps=20", "local_search.burn_in=10", "local_search.every=4"]
SMALL = ["model.hidden_dim=16", "train.batch_size=16", "eval.K=64", "eval.every=5", "trainer.max_steps=5"]


def _rows(run_dir, kind="train"):
    with open(run_dir / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r["kind"] == kind]


@pytest.mark.parametrize("energy", ["gmm25", "funnel", "manywell"])
@pytest.mark.parametrize("experiment", SENDERA + TEACHERS)
def test_every_preset_composes_and_runs(tiny_cfg, experiment, energy):
    extra = SMALL_LS if experiment.endswith("_ls") else []
    metrics, objects = train(tiny_cfg(f"experiment={experiment}", f"energy={energy}", *SMALL, *extra))
    assert metrics["step"] == 5 and torch.isfinite(torch.tensor(metrics["log_Z_rw"]))
    assert objects["module"].energy.dim == {"gmm25": 2, "funnel": 10, "manywell": 32}[energy]


@pytest.mark.parametrize("loss", ["tb", "vargrad", "db", "subtb", "fl_subtb"])
def test_both_ways_from_a_buffer_works_with_every_forward_loss(tiny_cfg, loss):
    # The reference crashes for db/subtb with both_ways; here the backward objective defaults to the forward one.
    cfg = tiny_cfg(
        f"loss={loss}",
        "buffer=rank",
        "train.phases=both_ways",
        "train.backward_source=buffer",
        "trainer.log_every_n_steps=1",
        "trainer.max_steps=6",
    )
    _, objects = train(cfg)
    rows = _rows(objects["run_dir"])
    assert [r["phase"] for r in rows] == ["forward", "backward"] * 3  # row k reports step k-1
    assert float(rows[-1]["buffer_size"]) == 3 * 16  # three forward batches stored, none twice
    # every row from the second on carries both phases' latest losses: its own, and the other phase's last one
    assert rows[0]["loss_forward"] == "" and rows[0]["loss_backward"] == ""
    for prev, row in zip(rows, rows[1:], strict=False):
        assert row[f"loss_{row['phase']}"] == row["loss"] and row[f"loss_{prev['phase']}"] == prev["loss"]


def test_local_search_fills_its_buffer_and_logs_acceptance(tiny_cfg):
    cfg = tiny_cfg("experiment=tb_expl_ls", *SMALL_LS, "trainer.max_steps=8", "trainer.log_every_n_steps=1")
    _, objects = train(cfg)
    rows = _rows(objects["run_dir"])
    last = rows[-1]
    assert 0.0 < float(last["ls_accept_rate"]) <= 1.0
    assert float(last["ls_step_size"]) > 0
    assert float(last["ls_buffer_size"]) > 0
    assert float(last["buffer_size"]) == 4 * 16


def test_the_teacher_schedule_is_50_25_25_and_the_teacher_trains(tiny_cfg):
    cfg = tiny_cfg("experiment=at_teacher", *SMALL, "trainer.max_steps=8", "trainer.log_every_n_steps=1")
    _, objects = train(cfg)
    rows = _rows(objects["run_dir"])
    phases = [r["phase"] for r in rows]  # row k is the state after step k (the k-th step is k-1)
    assert phases == ["forward", "teacher", "forward", "replay"] * 2
    last = rows[-1]
    assert (float(last["share_forward"]), float(last["share_teacher"]), float(last["share_replay"])) == (
        0.5,
        0.25,
        0.25,
    )
    assert all(float(r["teacher_loss"]) >= 0 for r in rows)
    module = objects["module"]
    assert module.teacher_gfn is not None and not module.teacher_gfn.langevin
    opt = objects["trainer"].optimizers[1]
    assert opt.param_groups[0]["lr"] == pytest.approx(5 * module.cfg.train.lr_policy)
    assert objects["trainer"].global_step == 8  # teacher updates do not count as training steps


def _resume_from_previous(run_dir):
    """Make ``run_dir`` look like a run killed after its next-to-last checkpoint."""
    ckpts = run_dir / "checkpoints"
    shutil.copy(ckpts / "previous.ckpt", ckpts / "last.ckpt")
    (run_dir / "metrics.json").unlink()


@pytest.mark.parametrize("experiment", ["tb_expl_ls", "at_teacher", "at_per"])
def test_buffers_local_search_and_teacher_survive_a_resume_bit_for_bit(tiny_cfg, tmp_path, experiment):
    extra = SMALL_LS if experiment.endswith("_ls") else []
    args = [f"experiment={experiment}", *SMALL, *extra, "trainer.max_steps=12", "checkpoint.every=6", "eval.every=12"]
    a, b = tmp_path / "a", tmp_path / "b"
    metrics_a, _ = train(tiny_cfg(*args, run_dir=a))
    train(tiny_cfg(*args, run_dir=b))
    _resume_from_previous(b)
    state = load_checkpoint(b / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 6 and "buffer" in state["sampler_state"]["offpolicy"]
    metrics_b, _ = train(tiny_cfg(*args, run_dir=b))
    assert json.loads((b / "manifest.json").read_text())["resumes"][-1]["from_step"] == 6
    assert metrics_a == metrics_b
    sa, sb = load_checkpoint(a / "checkpoints" / "last.ckpt"), load_checkpoint(b / "checkpoints" / "last.ckpt")
    for k in sa["state_dict"]:
        assert torch.equal(sa["state_dict"][k], sb["state_dict"][k]), k
    ba, bb = sa["sampler_state"]["offpolicy"]["buffer"], sb["sampler_state"]["offpolicy"]["buffer"]
    assert all(torch.equal(ba[k], bb[k]) for k in ba)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["train.phases=both_ways", "train.backward_source=buffer"],
            "train.backward_source=buffer needs a replay buffer",
        ),
        (["buffer=rank", "train.phases=backward", "train.backward_source=buffer"], "use train.phases=both_ways"),
        (["buffer=rank", "train.phases=both_ways", "train.backward_source=local_search"], "needs local_search=mala"),
        (
            ["teacher=adaptive", "buffer=per", "train.backward_source=buffer", "loss=subtb"],
            "teacher._target_=sampler.adaptive_teacher.AdaptiveTeacher) trains a TB student",
        ),
        (["teacher=adaptive", "buffer=uniform", "train.backward_source=buffer"], "use buffer=per"),
        (["buffer=fancy"], "Could not find 'buffer/fancy'"),
        (["buffer=rank", "buffer.capacity=0"], "buffer.capacity must be a positive integer (got 0)"),
    ],
)
def test_off_policy_config_errors_are_one_line(tiny_cfg, overrides, message):
    from hydra.errors import HydraException

    with pytest.raises((ConfigError, HydraException)) as err:
        train(tiny_cfg(*overrides))
    assert message in str(err.value)

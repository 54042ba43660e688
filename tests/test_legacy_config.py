"""Runs saved by earlier versions keep working: their configs (``buffer.name: rank`` ...) are upgraded to today's
``_target_`` layout, build, and an old checkpoint resumes to exactly the numbers the old code reached.

The fixtures under tests/data/ were written by the code before the groups selected by ``_target_``:
``legacy_run_<preset>/`` holds an 8-step run's ``config_resolved.yaml``, its checkpoint at step 4 (``step4.ckpt``),
its final ``metrics.json`` and the SHA-256 of every final weight tensor.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sampler.training.config_check import ConfigError, check_config
from sampler.training.legacy import upgrade_config
from sampler.training.loading import load_module
from sampler.training.module import SamplerModule
from sampler.training.run import train
from sampler.training.trust import check_targets

DATA = Path(__file__).resolve().parent / "data"
GROUPS = ("buffer", "local_search", "teacher")


@pytest.fixture(autouse=True)
def _one_thread(one_intra_op_thread):
    """The fixtures were written with one intra-op thread (and tiny tensors gain nothing from a second)."""


def _old_style(cfg, names: dict[str, str]):
    """``cfg`` with its buffer/local_search/teacher sections written as the earlier versions wrote them."""
    old = OmegaConf.to_container(cfg, resolve=False)
    for group, name in names.items():
        rest = {k: v for k, v in old[group].items() if k not in ("_target_", "_partial_")}
        old[group] = {"name": name, **rest}
    model = old["model"]  # model.engine was model.native, and activation / layer_norm did not exist
    model["native"] = {"auto": "auto", "native": True, "fused": False}[model.pop("engine")]
    assert model.pop("activation") == "gelu" and model.pop("layer_norm") is False
    return OmegaConf.create(old)


@pytest.mark.parametrize(
    "overrides, names",
    [
        (["experiment=tb_expl_lp_ls"], {"buffer": "rank", "local_search": "mala", "teacher": "none"}),
        (["experiment=at_teacher"], {"buffer": "per", "local_search": "none", "teacher": "adaptive"}),
        (["buffer=reward", "buffer.beta=2.0"], {"buffer": "reward", "local_search": "none", "teacher": "none"}),
        (["buffer=uniform", "buffer.eviction=lowest"], dict(buffer="uniform", local_search="none", teacher="none")),
        (["model.engine=fused"], {"buffer": "none", "local_search": "none", "teacher": "none"}),
    ],
)
def test_an_old_style_config_upgrades_to_the_config_composed_today(tiny_cfg, overrides, names):
    new = tiny_cfg(*overrides)
    old = _old_style(new, names)
    assert old.buffer.name == names["buffer"] and "_target_" not in old.buffer
    upgraded = upgrade_config(old)
    assert OmegaConf.to_container(upgraded) == OmegaConf.to_container(new)
    assert OmegaConf.to_container(old.buffer)["name"] == names["buffer"]  # the input is left as it was
    check_config(upgraded)
    torch.manual_seed(0)
    module = SamplerModule(upgraded)
    assert (module.offpolicy.local_search is not None) == (names["local_search"] == "mala")
    assert (module.teaching is not None) == (names["teacher"] == "adaptive")


def test_upgrading_a_config_of_today_changes_nothing(tiny_cfg):
    new = tiny_cfg("experiment=tb_expl_ls")
    assert OmegaConf.to_container(upgrade_config(new)) == OmegaConf.to_container(new)


def test_an_old_option_that_no_longer_exists_is_one_line(tiny_cfg):
    old = _old_style(tiny_cfg(), {"buffer": "prioritised"})
    with pytest.raises(ConfigError, match=r"^buffer.name=prioritised in a saved config is not an option this version"):
        upgrade_config(old)


def test_a_published_run_config_upgrades_and_builds():
    # docs/results/sendera2024/energy=gmm25,experiment=tb/seed=0/config_resolved.yaml, as the sweep saved it.
    path = DATA / "sendera2024_gmm25_tb_config_resolved.yaml"
    old = OmegaConf.load(path)
    assert old.buffer.name == "none" and old.teacher.name == "none"
    cfg = upgrade_config(old)
    assert {g: OmegaConf.to_container(cfg[g]) for g in GROUPS} == {g: {} for g in GROUPS}
    assert old.model.native == "auto" and "native" not in cfg.model
    assert (cfg.model.engine, cfg.model.activation, cfg.model.layer_norm) == ("auto", "gelu", False)
    check_targets(cfg, source=str(path))
    check_config(cfg)
    torch.manual_seed(0)
    module = SamplerModule(cfg)
    assert module.energy.dim == 2 and module.offpolicy.buffer is None and module.gfn.engine.name == "auto"


def _digest(state_dict: dict) -> dict[str, str]:
    return {k: hashlib.sha256(v.detach().contiguous().numpy().tobytes()).hexdigest() for k, v in state_dict.items()}


@pytest.mark.parametrize("preset", ["tb_expl_ls", "at_teacher"])
def test_a_checkpoint_of_the_old_code_resumes_to_the_old_code_s_numbers(tmp_path, preset):
    src = DATA / f"legacy_run_{preset}"
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(src / "config_resolved.yaml", run / "config_resolved.yaml")  # the old layout, as saved
    shutil.copy(src / "step4.ckpt", run / "checkpoints" / "last.ckpt")
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 4 and "buffer" in state["sampler_state"]["offpolicy"]

    cfg = upgrade_config(OmegaConf.load(src / "config_resolved.yaml"))
    OmegaConf.update(cfg, "paths.run_dir", str(run))
    metrics, _ = train(cfg)
    assert metrics == json.loads((src / "metrics.json").read_text())
    final = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert _digest(final["state_dict"]) == json.loads((src / "final_state_sha256.json").read_text())


def test_eval_loads_an_old_run_directory(tmp_path):
    # scripts/eval.py and sample.py go through load_module: an old config_resolved.yaml beside an old checkpoint.
    src = DATA / "legacy_run_tb_expl_ls"
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(src / "config_resolved.yaml", tmp_path / "config_resolved.yaml")
    shutil.copy(src / "step4.ckpt", tmp_path / "checkpoints" / "last.ckpt")
    module, cfg, step = load_module(tmp_path / "checkpoints" / "last.ckpt")
    assert step == 4 and cfg.buffer._target_ == "sampler.buffers.RankBuffer"
    assert module.offpolicy.buffer.capacity == 128 and len(module.offpolicy.buffer) == 2 * 16
    assert module.offpolicy.mala.step_size != 0.1  # the adapted MALA step size came back from the checkpoint


def test_reading_a_saved_config_imports_no_torch():
    # summarize and diff_runs upgrade every run's config they read; they must still answer without importing torch
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    code = (
        "import sys\n"
        "from sampler.analysis.runs import _read_config\n"
        f"cfg = _read_config(__import__('pathlib').Path({str(DATA / 'sendera2024_gmm25_tb_config_resolved.yaml')!r}))\n"
        "assert cfg['model']['engine'] == 'auto' and cfg['buffer'] == {}, cfg\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

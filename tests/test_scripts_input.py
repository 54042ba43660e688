"""What the eval/sample/reproduce scripts do with what a user hands them: a bad number, device or path is one line
and exit status 2 before torch is imported; an n or K whose memory does not fit here is refused before anything
is sampled; and a run directory whose saved config names a callable outside the platform cannot run it unless the
user trusts that exact name."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, TINY, compose_cfg

from sampler.app.cli import UsageError
from sampler.training.run import train
from sampler.training.trust import UntrustedTargetError, check_targets

PY = sys.executable
#: A module a crafted run config points at: importing it and calling `boom` each leave a marker file beside it.
PLANTED = """
from pathlib import Path

Path(__file__).with_name("imported").touch()


def boom(marker):
    Path(marker).touch()
    return object()  # not an energy
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, one_intra_op_thread) -> Path:
    """A finished tiny run: `config_resolved.yaml`, `metrics.json`, `checkpoints/last.ckpt` (PyTorch path: these
    tests are about the scripts' input, not the native kernels)."""
    d = tmp_path_factory.mktemp("scripts") / "run"
    train(compose_cfg(TINY + ["energy=gmm9", "model.engine=fused"], d))
    return d


def script(*args, pythonpath: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "SAMPLER_NATIVE": "0"}  # input handling: no wait for a build of the native kernels
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [PY, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one line a refused command prints (exit status 2, no traceback)."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-1000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    return line


# --- typed arguments ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, args, message",
    [
        ("eval", ["K=abc"], "K must be an integer ≥ 2 (got 'abc')"),
        ("eval", ["K=1"], "K must be an integer ≥ 2 (got '1')"),
        ("eval", ["K=2.5"], "K must be an integer ≥ 2 (got '2.5')"),
        ("eval", ["seed=-1"], "seed must be an integer from 0 to 18446744073709551615 (got '-1')"),
        ("eval", ["seed=x"], "seed must be an integer from 0 to 18446744073709551615 (got 'x')"),
        ("eval", ["device=tpu"], "device must be cpu, cuda or cuda:N (got 'tpu')"),
        ("eval", ["plots="], "plots must be a path (got '')"),
        ("sample", ["n=abc"], "n must be an integer ≥ 1 (got 'abc')"),
        ("sample", ["n=0"], "n must be an integer ≥ 1 (got '0')"),
        ("sample", ["n=1.5e0"], "n must be an integer ≥ 1 (got '1.5e0')"),
        ("sample", ["n=nan"], "n must be an integer ≥ 1 (got 'nan')"),
        ("sample", ["n=10", "batch=0"], "batch must be an integer ≥ 1 (got '0')"),
        (
            "sample",
            ["n=10", "trust=os"],
            "trust must be comma-separated dotted names such as my.module.MyEnergy (got 'os')",
        ),
    ],
)
def test_a_bad_argument_is_one_line_before_torch_is_imported(name, args, message, tmp_path):
    # The checkpoint does not exist: the arguments are checked first, without importing torch.
    argv = [f"ckpt={tmp_path / 'none.ckpt'}", *args] + ([f"out={tmp_path / 's.pt'}"] if name == "sample" else [])
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['scripts/{name}.py', *{argv!r}]\n"
        "try:\n"
        f"    runpy.run_path('scripts/{name}.py', run_name='__main__')\n"
        "finally:\n"
        "    print('torch' in sys.modules, file=sys.stderr)\n"
    )
    proc = script("-c", code, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {message}", "False"]


def main_of(name: str):
    """The `main(argv) -> int` of `scripts/<name>.py`, imported in-process (torch is already loaded here)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def refused(name: str, *argv) -> str:
    """The one-line message with which `scripts/<name>.py` refuses ``argv`` (`sampler.app.cli.run` prints it as
    ``error: <message>`` and exits 2)."""
    with pytest.raises(UsageError) as err:
        main_of(name)([str(a) for a in argv])
    message = str(err.value)
    assert "\n" not in message, message
    return message


def test_paths_that_cannot_be_used_are_one_line(run_dir, tmp_path):
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert refused("eval", f"ckpt={ckpt}", f"plots={a_file}") == f"plots={a_file} is not a directory"
    assert refused("eval", f"ckpt={ckpt}", f"out={tmp_path}") == f"out={tmp_path} is a directory; give a file name"
    assert refused("sample", f"ckpt={ckpt}", "n=5", f"out={a_file}/s.pt") == (
        f"out={a_file}/s.pt cannot be created: {a_file} is not a directory"
    )
    assert (
        refused("eval", f"ckpt={ckpt}", f"config={tmp_path / 'c.yaml'}") == f"config not found: {tmp_path / 'c.yaml'}"
    )
    with pytest.raises(UsageError, match=r"^arguments are key=value \(got 'ckpt'\)\nusage: "):
        main_of("eval")(["ckpt"])


@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="this machine has a GPU cuda:7")
def test_a_gpu_that_is_not_there_is_one_line(run_dir):
    message = refused("eval", f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "device=cuda:7")
    assert message.startswith("device=cuda:7, but torch sees ") and message.endswith(" here")


# --- sizes that do not fit ------------------------------------------------------------------------------------


def test_an_n_or_K_that_does_not_fit_is_refused_naming_it(run_dir, tmp_path):
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    out = tmp_path / "s.pt"
    message = refused("sample", f"ckpt={ckpt}", "n=1e12", f"out={out}")
    # 10¹² samples of dimension 2 in float32: 7.3 TiB
    assert message.startswith("the configured sizes need about 7.3 TiB (n=1000000000000 × energy.dim=2: samples")
    assert message.endswith("are available here — reduce n")
    assert not out.exists()
    message = refused("eval", f"ckpt={ckpt}", "K=1e9")
    assert "((K=1000000000)²: MMD kernel matrices" in message and message.endswith("reduce K")


def test_sample_takes_a_whole_number_written_as_a_float_and_leaves_no_partial_file(run_dir, tmp_path, capsys):
    out = tmp_path / "s.npy"
    assert main_of("sample")([f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "n=1e3", "batch=300", f"out={out}"]) == 0
    x = np.load(out)
    assert x.shape == (1000, 2) and np.isfinite(x).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npy"]  # no temporary left beside it
    assert capsys.readouterr().out.startswith("wrote 1000 samples of dimension 2")


# --- untrusted targets ----------------------------------------------------------------------------------------


@pytest.fixture
def shared_run(run_dir, tmp_path, monkeypatch) -> tuple[Path, Path, Path]:
    """``(run, modules, marker)``: a copy of the run whose saved config builds its energy with `planted.boom`, and
    the directory holding `planted.py` (which leaves `imported` there on import, and `marker` when called); the
    directory is on this process's import path for the test."""
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "planted.py").write_text(PLANTED)
    monkeypatch.syspath_prepend(str(modules))
    monkeypatch.delitem(sys.modules, "planted", raising=False)  # and dropped again after the test
    run = shutil.copytree(run_dir, tmp_path / "shared_run")
    marker = tmp_path / "marker"
    config = yaml.safe_load((run / "config_resolved.yaml").read_text())
    config["energy"] = {"_target_": "planted.boom", "marker": str(marker)}
    (run / "config_resolved.yaml").write_text(yaml.safe_dump(config))
    yield run, modules, marker
    sys.modules.pop("planted", None)


def untrusted(config: Path, option: str) -> str:
    return (
        f"{config}: energy._target_=planted.boom is not one of the platform's classes (sampler.*) and would run its "
        f"code; if you trust it, pass {option}planted.boom"
    )


def test_eval_refuses_a_target_outside_the_platform_without_running_it(shared_run):
    # As a user runs it: one line, exit status 2, and the planted module never imported, let alone called.
    run, modules, marker = shared_run
    proc = script("scripts/eval.py", f"ckpt={run / 'checkpoints' / 'last.ckpt'}", pythonpath=modules)
    assert error_line(proc) == f"error: {untrusted(run / 'config_resolved.yaml', 'trust=')}"
    assert not marker.exists() and not (modules / "imported").exists()


def test_a_target_is_built_only_when_trusted_by_its_exact_name(shared_run):
    run, modules, marker = shared_run
    ckpt, config, out = run / "checkpoints" / "last.ckpt", run / "config_resolved.yaml", run / "s.pt"
    assert refused("sample", f"ckpt={ckpt}", "n=5", f"out={out}") == untrusted(config, "trust=")
    assert refused("eval", f"ckpt={ckpt}", "trust=planted.boo") == untrusted(config, "trust=")  # exact names only
    assert not marker.exists() and not (modules / "imported").exists() and not out.exists()

    message = refused("eval", f"ckpt={ckpt}", "trust=other.Cls,planted.boom")
    assert message.startswith("energy._target_=planted.boom is not an energy")  # built, and no energy
    assert marker.exists()


def test_reproduce_refuses_a_target_outside_the_platform_unless_trusted(shared_run, tmp_path):
    run, modules, marker = shared_run
    assert refused("reproduce", run, "--out", tmp_path / "repro") == untrusted(run / "config_resolved.yaml", "--trust ")
    assert not marker.exists() and not (modules / "imported").exists() and not (tmp_path / "repro").exists()

    message = refused("reproduce", run, "--out", tmp_path / "repro2", "--trust", "planted.boom")
    assert message.startswith("energy._target_=planted.boom is not an energy")
    assert marker.exists()


def test_a_normal_run_evaluates_with_no_extra_arguments(run_dir, capsys):
    assert main_of("eval")([f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "K=64"]) == 0
    assert json.loads(capsys.readouterr().out)["eval_K"] == 64.0


@pytest.mark.parametrize(
    "config, key",
    [
        # a nested positional argument is built before its parent
        (
            {"energy": {"_target_": "sampler.energies.GMM9", "_args_": [{"_target_": "planted.boom"}]}},
            "energy._args_[0]._target_=planted.boom",
        ),
        # a path through a platform module to something imported there is not the platform's class
        (
            {"energy": {"_target_": "sampler.training.run.os.system", "command": "true"}},
            "energy._target_=sampler.training.run.os.system",
        ),
        # a platform function (it could train, write files, ...) is not a class
        ({"model": {"_target_": "sampler.analysis.reproduce.reproduce"}}, "model._target_=sampler.analysis.reproduce"),
        # a target produced by an interpolation is checked as resolved
        ({"name": "planted.boom", "energy": {"_target_": "${name}"}}, "energy._target_=planted.boom"),
        ({"model": {"_target_": 3}}, "model._target_ must be a dotted name (got 3)"),
    ],
)
def test_check_targets_rejects_what_is_not_a_platform_class(config, key):
    from omegaconf import OmegaConf

    with pytest.raises(UntrustedTargetError) as err:
        check_targets(OmegaConf.create(config), trusted=["planted"])  # a module name trusts none of its members
    assert key in str(err.value) and "\n" not in str(err.value)


def test_a_hydra_section_target_is_never_accepted_and_every_preset_passes():
    from omegaconf import OmegaConf

    with pytest.raises(UntrustedTargetError, match=r"^hydra\.callbacks\.x\._target_='sampler.energies.GMM9': a targ"):
        check_targets(
            OmegaConf.create({"hydra": {"callbacks": {"x": {"_target_": "sampler.energies.GMM9"}}}}),
            trusted=["sampler.energies.GMM9"],
        )
    for preset in sorted((ROOT / "conf" / "experiment").glob("*.yaml")):
        check_targets(compose_cfg([f"experiment={preset.stem}"], Path("/tmp/run")))
    check_targets({"energy": {"_target_": "my.Energy"}}, trusted=["my.Energy"])

"""Loggers: W&B (offline without a key) and TensorBoard mirror metrics.csv; the files they leave are readable."""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sampler.training.config_check import ConfigError
from sampler.training.loggers import WandbSink, wandb_mode, wandb_server_unreachable
from sampler.training.run import main, train

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "energy=gmm9",
    "model.T=10",
    "model.hidden_dim=16",
    "train.batch_size=16",
    "trainer.max_steps=20",
    "trainer.log_every_n_steps=5",
    "eval.every=10",
    "eval.K=64",
    "checkpoint.every=10",
    "trainer.enable_progress_bar=false",
]


def wandb_records(path: Path) -> list:
    """The protobuf records of a ``run-*.wandb`` file (a LevelDB-style log: 32 KiB blocks, 7-byte headers)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    pos, block, chunk, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if n == 0 and kind == 0:
            break
        chunk += data[pos + 7 : pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def tensorboard_events(log_dir: Path) -> tuple[dict[str, dict[int, float]], set[str]]:
    """``({tag: {step: value}}, image tags)`` from the TFRecord event files in ``log_dir``."""
    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float]] = {}
    images = set()
    for f in sorted(log_dir.glob("events.out.tfevents.*")):
        data, pos = f.read_bytes(), 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[pos + 12 : pos + 12 + n])
            pos += 12 + n + 4
            for v in event.summary.value:
                if v.HasField("image"):
                    images.add(v.tag)
                else:
                    out.setdefault(v.tag, {})[int(event.step)] = v.simple_value
    return out, images


def test_wandb_without_a_key_logs_offline_files_that_hold_the_metrics(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["NETRC"] = str(tmp_path / "no-netrc")  # no key; HOME stays, so the native kernel cache is reused
    cmd = [sys.executable, "scripts/train.py", "logger=wandb", "seed=3", f"paths.root={tmp_path}", *SMALL]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    said = [line for line in (out.stdout + out.stderr).splitlines() if "W&B:" in line]
    assert len(said) == 1 and "offline (no API key configured)" in said[0] and "wandb sync" in said[0]

    run_dir = next((tmp_path / "runs").iterdir())
    final = json.loads((run_dir / "metrics.json").read_text())
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    (log_file,) = offline[0].glob("run-*.wandb")
    records = wandb_records(log_file)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert "seed" not in run.run_group and "energy=gmm9" in run.run_group
    assert {"energy=gmm9", "loss=tb", "logger=wandb"} <= set(run.tags)
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["seed"] == 3 and config["train"]["batch_size"] == 16 and config["hydra_choices"]["loss"] == "tb"

    history: dict[int, dict] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            history.setdefault(int(r.history.step.num), {}).update(row)
    assert all("train/loss" in history[s] for s in (5, 10, 15, 20))
    assert history[20]["eval/dlogZ_rw"] == pytest.approx(final["dlogZ_rw"], rel=1e-12)
    assert history[10]["samples/_type"] == "image-file" and history[20]["metric_curves/_type"] == "image-file"
    media = list((offline[0] / "files" / "media" / "images").glob("samples_*.png"))
    assert len(media) == 2

    sync = subprocess.run(
        [str(Path(sys.executable).parent / "wandb"), "sync", "--dry-run", str(offline[0])],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sync.returncode == 0 and "Would sync 1 run" in sync.stdout + sync.stderr


def test_wandb_mode_follows_the_key_and_the_environment(tmp_path, monkeypatch):
    for k in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "NETRC"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert wandb_mode("auto") == ("offline", "no API key configured")
    (tmp_path / ".netrc").write_text("machine api.wandb.ai login user password abc\n")
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    assert wandb_mode("auto")[0] == "online"
    monkeypatch.delenv("NETRC")
    (tmp_path / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode("auto")[0] == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode("auto") == ("disabled", "WANDB_MODE=disabled")
    assert wandb_mode("offline")[0] == "offline"


def test_a_resumed_run_continues_the_same_wandb_run(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = tiny_cfg("logger=wandb", "logger.log_images=false")
    train(cfg)
    run_dir = tmp_path / "run"
    first = (run_dir / "wandb" / "run_id").read_text()
    (run_dir / "metrics.json").unlink()
    train(cfg)  # resumes from last.ckpt in the same directory
    assert (run_dir / "wandb" / "run_id").read_text() == first
    ids = {p.name.rsplit("-", 1)[1] for p in (run_dir / "wandb").glob("offline-run-*")}
    assert ids == {first.strip()}
    assert os.environ["WANDB_MODE"] == "offline"  # restored as it was


def test_tensorboard_events_mirror_metrics_csv(tiny_cfg, tmp_path):
    cfg = tiny_cfg("logger=tensorboard", "eval.plots=true", "trainer.log_every_n_steps=1")
    metrics, _ = train(cfg)
    scalars, images = tensorboard_events(tmp_path / "run" / "tensorboard")
    assert sorted(scalars["train/loss"]) == [1, 2, 3, 4, 5]
    assert scalars["eval/dlogZ_rw"][5] == pytest.approx(metrics["dlogZ_rw"], rel=1e-6)
    assert {"samples", "metric_curves"} <= images


def free_port() -> int:
    """A localhost port nothing listens on (connecting to it is refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def wandb_key(monkeypatch):
    """A W&B API key in the environment, no other W&B or proxy settings; returns a function that points
    ``WANDB_BASE_URL`` at a localhost port."""
    for k in list(os.environ):
        if k.startswith("WANDB_") or k.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)

    def server_at(port: int) -> str:
        url = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("WANDB_BASE_URL", url)
        return url

    return server_at


def test_the_probe_tells_a_listening_server_from_a_closed_port():
    with socket.create_server(("127.0.0.1", 0)) as server:
        assert wandb_server_unreachable(f"http://127.0.0.1:{server.getsockname()[1]}") is None
    port = free_port()
    assert wandb_server_unreachable(f"http://127.0.0.1:{port}") == f"127.0.0.1:{port} refused the connection"


def test_wandb_with_a_key_but_no_reachable_server_logs_offline_and_says_so(tiny_cfg, tmp_path, wandb_key, caplog):
    url = wandb_key(free_port())
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="sampler.training.loggers"):
        train(tiny_cfg("logger=wandb", "logger.log_images=false"))
    assert time.monotonic() - started < 30  # wandb.init alone would wait ~100 s and then fail
    said = [r for r in caplog.records if "W&B:" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    message = said[0].getMessage()
    assert message.startswith(f"W&B: offline (API key configured, but the W&B server {url} is unreachable: ")
    run_dir = tmp_path / "run"
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    assert f"upload later with `wandb sync {offline}`" in message
    assert list(offline.glob("run-*.wandb")) and not list((run_dir / "wandb").glob("run-*"))
    assert "WANDB_MODE" not in os.environ  # restored as it was


def test_wandb_online_without_a_reachable_server_stops_in_one_line_before_training(
    tiny_cfg, tmp_path, wandb_key, capsys
):
    url = wandb_key(free_port())
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_cfg("logger=wandb", "logger.mode=online"))
    assert exit_info.value.code == 2 and time.monotonic() - started < 20
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: logger.mode=online, but the W&B server {url} is unreachable (127.0.0.1:")
    assert "logger.mode=auto or offline" in err
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "wandb").exists()
    assert "WANDB_MODE" not in os.environ


def test_a_failing_online_wandb_init_falls_back_offline_or_stops_in_one_line(tmp_path, wandb_key, monkeypatch, caplog):
    import wandb

    server = socket.create_server(("127.0.0.1", 0))  # answers the probe; wandb.init fails all the same
    wandb_key(server.getsockname()[1])
    real_init = wandb.init

    def init(*args, mode=None, **kw):
        if mode == "online":
            raise wandb.errors.CommError("Run initialization has timed out after 90.0 sec.\nPlease try again.")
        return real_init(*args, mode=mode, **kw)

    monkeypatch.setattr(wandb, "init", init)
    lcfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "logger" / "wandb.yaml")
    with server:
        lcfg.mode = "online"
        with pytest.raises(ConfigError) as info:
            WandbSink(lcfg, tmp_path / "a", {}, "", {}, 0)
        assert str(info.value).startswith(
            "logger.mode=online, but wandb.init failed (CommError: Run initialization has timed out after 90.0 sec. "
        )
        assert "\n" not in str(info.value) and "WANDB_MODE" not in os.environ

        lcfg.mode = "auto"
        with caplog.at_level(logging.INFO, logger="sampler.training.loggers"):
            sink = WandbSink(lcfg, tmp_path / "b", {}, "", {}, 0)
        try:
            assert os.environ["WANDB_MODE"] == "offline"
        finally:
            sink.close(True)
    (said,) = [r for r in caplog.records if "W&B:" in r.getMessage()]
    assert said.levelno == logging.WARNING
    assert said.getMessage().startswith("W&B: offline (API key configured, but wandb.init failed online: CommError")
    assert len(list((tmp_path / "b" / "wandb").glob("offline-run-*"))) == 1

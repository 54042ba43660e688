"""Building the native kernels: one build directory per source/torch/flags, builds serialized by our own ``flock``,
and a build killed half-way (torch's ``lock`` file left behind) blocks no later process.

These tests use the real extension cache, so the first run on a machine compiles the kernels once (about a minute);
afterwards each subprocess only loads the built module.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

native = pytest.importorskip("sampler.gfn.accelerators.native")

ROOT = Path(__file__).resolve().parents[1]
LOAD = (
    "import logging; logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')\n"
    "from sampler.gfn.accelerators import native\n"
    "print('loaded', native.load(required=True).__file__, flush=True)\n"
)


@pytest.fixture(scope="module")
def build_dir() -> Path:
    """The build directory of this checkout, with the kernels built in it."""
    native.load(required=True)
    directory = native.build_directory()
    assert list(directory.glob("*.so"))
    return directory


@pytest.fixture
def processes():
    """Processes a test starts; any still running at its end (a failed test) are killed."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start_loader(started: list, checkout: Path = ROOT) -> tuple[subprocess.Popen, list[str]]:
    """A fresh process that loads the kernels (of the ``sampler`` package in ``checkout``); its stderr lines are
    collected as they come. :func:`finish` waits for it."""
    env = {k: v for k, v in os.environ.items() if k != "SAMPLER_NATIVE"}
    env["PYTHONPATH"] = str(checkout)
    proc = subprocess.Popen(
        [sys.executable, "-c", LOAD + "print('from', native.__file__)\n"],
        cwd=checkout,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    started.append(proc)
    lines: list[str] = []
    proc.reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    proc.reader.start()
    return proc, lines


def finish(proc: subprocess.Popen, lines: list[str], timeout_s: float = 120) -> str:
    """Wait for a loader started by :func:`start_loader`; its stdout (it must have succeeded)."""
    proc.wait(timeout=timeout_s)
    out = proc.stdout.read()
    proc.reader.join(10)
    assert proc.returncode == 0, "".join(lines)[-3000:]
    return out


def test_the_build_directory_name_follows_the_source_torch_and_flags():
    name, flags = "sampler_native_avx2", ["-O3", "-mavx2"]
    base = native.build_dir_name(name, b"int f() { return 1; }", flags, "2.13.0")
    assert base.startswith(name + "_") and len(base) == len(name) + 13
    assert native.build_dir_name(name, b"int f() { return 1; }", list(flags), "2.13.0") == base
    assert native.build_dir_name(name, b"int f() { return 2; }", flags, "2.13.0") != base
    assert native.build_dir_name(name, b"int f() { return 1; }", flags, "2.14.0") != base
    assert native.build_dir_name(name, b"int f() { return 1; }", ["-O2", "-mavx2"], "2.13.0") != base
    assert native.build_dir_name(name, b"int f() { return 1; }", flags, "2.13.0", ninja_version="1.13.0") != base


def test_a_checkout_at_another_path_with_the_same_source_loads_the_same_build(build_dir, tmp_path, processes):
    shutil.copytree(ROOT / "sampler", tmp_path / "sampler", ignore=shutil.ignore_patterns("__pycache__"))
    built = {p.name: p.stat().st_mtime_ns for p in build_dir.iterdir() if p.suffix in (".so", ".o")}
    proc, lines = start_loader(processes, tmp_path)
    out = finish(proc, lines)
    assert f"loaded {build_dir}" in out and f"from {tmp_path}" in out
    assert {p.name: p.stat().st_mtime_ns for p in build_dir.iterdir() if p.suffix in (".so", ".o")} == built


def test_a_stale_torch_lock_from_a_killed_build_does_not_block_the_next_process(build_dir, processes):
    stale = build_dir / "lock"
    stale.touch()  # what torch's FileBaton leaves when the compiling process is killed
    try:
        proc, lines = start_loader(processes)
        out = finish(proc, lines)  # torch alone would wait for the file forever
        assert out.startswith(f"loaded {build_dir}"), out
        said = [line for line in lines if str(stale) in line]
        assert len(said) == 1 and said[0].startswith("WARNING") and "killed" in said[0]
        assert not stale.exists()
    finally:
        stale.unlink(missing_ok=True)


def test_a_second_process_waits_for_a_build_in_progress_and_then_loads(build_dir, processes):
    with open(build_dir / native.BUILD_LOCK, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # this test process plays the one compiling
        proc, lines = start_loader(processes)
        deadline = time.monotonic() + 120
        while not any("waiting for another process" in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.1)
        time.sleep(1.0)
        assert proc.poll() is None  # still waiting while the lock is held
    out = finish(proc, lines)
    assert out.startswith(f"loaded {build_dir}")
    said = [line for line in lines if "waiting for another process" in line]
    assert said == [f"WARNING waiting for another process compiling the native kernels ({build_dir})\n"]


def test_waiting_gives_up_after_the_timeout_naming_the_lock_file(tmp_path, caplog):
    lock = tmp_path / native.BUILD_LOCK
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a separate open file: the lock conflicts even within one process
        started = time.monotonic()
        with pytest.raises(native.NativeUnavailable) as info, caplog.at_level(logging.WARNING):
            with native.build_lock(tmp_path, timeout_s=0.5):
                pass
    assert 0.5 <= time.monotonic() - started < 5
    message = str(info.value)
    assert "\n" not in message and message.endswith(f"if none is running, delete {lock}")
    assert [r.getMessage() for r in caplog.records] == [
        f"waiting for another process compiling the native kernels ({tmp_path})"
    ]
    with native.build_lock(tmp_path, timeout_s=0.5):  # free again once released
        pass

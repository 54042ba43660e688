"""Native CPU kernels of the rollout hot path (``native/rollout.cpp``), compiled on first use.

On a CPU the sampling loop's cost is mostly fixed per-operation overhead: a policy step on a [300, 64] batch is
~15 small operations, each below ATen's parallel grain, so each runs on one core and pays 5–25 µs of dispatch for
a few µs of arithmetic. The native step runs the whole network and the state update for a chunk of rows per
thread in one call; the fused head computes log P_F (and its gradient) and the Brownian bridge's log P_B in one
pass over ``[T, B, d]`` instead of a dozen. Same formulas as the PyTorch path, equal to float32 rounding
(tests/test_native.py).

The kernels are compiled by ``torch.utils.cpp_extension`` (C++ compiler and ninja) the first time a process needs
them (about a minute; later processes load the cached build), into a directory of torch's extension cache
(``TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions/...``) named for a hash of the source, the torch version,
the compiler flags and the ninja version: checkouts with different sources keep separate builds, checkouts with the
same source share one (it compiles a copy of the source kept there, so the checkout's path is not part of the
build). An exclusive ``flock`` on a file in that directory serializes the builds; the kernel releases it when a
process dies, so a build killed half-way blocks nobody (torch's own ``lock`` file, which would, is removed as stale
by the next builder).

``model.engine``: ``auto`` uses them when they build and falls back to the fused PyTorch path with one warning when
they do not, ``native`` requires them, ``fused`` and ``reference`` never use them. ``SAMPLER_NATIVE=0`` in the
environment turns ``auto`` off.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

try:
    import fcntl
except ImportError:  # Windows has no fcntl: builds are not serialized there
    fcntl = None

log = logging.getLogger(__name__)

MODES = ("auto", "true", "false")
_SOURCE = Path(__file__).with_name("csrc") / "rollout.cpp"
_LDFLAGS = ("-fopenmp",)
#: How the build is set up (bump when that changes, so that old and new layouts never share a build directory).
_RECIPE = "source-copy-1"
#: Our build lock (held with ``flock`` while building or loading); torch's own lock file is ``lock``.
BUILD_LOCK = "sampler_build.lock"
#: How long a process waits for another one compiling the kernels before giving up (seconds).
BUILD_LOCK_TIMEOUT_S = 15 * 60
_lock = threading.Lock()
_module = None
_error: str | None = None


class NativeUnavailable(RuntimeError):
    """The native kernels could not be built or loaded here (the message says why)."""


def parse_mode(value) -> str:
    """The native-kernel mode ``auto | true | false`` of an accelerated engine (YAML booleans accepted)."""
    mode = {True: "true", False: "false"}.get(value, str(value).lower())
    if mode not in MODES:
        raise ValueError(f"model.native must be one of auto, true, false (got {value})")
    return mode


def _flags() -> tuple[str, list[str]]:
    """(extension name, compiler flags) for this CPU: AVX2 vector code where torch itself uses AVX2 or better."""
    capability = torch.backends.cpu.get_cpu_capability() if platform.machine() in ("x86_64", "AMD64") else "DEFAULT"
    flags = ["-O3", "-fopenmp"]
    if capability in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"]
        tag = "avx2"
    else:
        flags += ["-DCPU_CAPABILITY=DEFAULT"]
        tag = "default"
    return f"sampler_native_{tag}", flags


def _ensure_ninja_on_path() -> None:
    """torch's builder runs ``ninja`` from PATH; the pinned ninja package lives beside this interpreter."""
    if shutil.which("ninja"):
        return
    try:
        import ninja  # noqa: PLC0415 - optional until a build is needed

        bin_dir = ninja.BIN_DIR
    except ImportError:
        bin_dir = os.path.dirname(sys.executable)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def load(required: bool = False):
    """The compiled kernel module, building it on first use; ``None`` when it cannot be built (``required``:
    raise :class:`NativeUnavailable` instead). The outcome is cached for the process."""
    global _module, _error
    with _lock:
        if _module is None and _error is None:
            if os.environ.get("SAMPLER_NATIVE", "1") == "0" and not required:
                return None
            try:
                _module = _build()
            except Exception as err:  # noqa: BLE001 - any build failure means: use the PyTorch path
                _error = " ".join(f"{type(err).__name__}: {err}".split())[:300]
                log.warning("native rollout kernels unavailable (%s); using the PyTorch path", _error)
        if _module is None and required:
            raise NativeUnavailable(f"model.engine=native, but the native kernels could not be built: {_error}")
        return _module


def build_dir_name(
    name: str, source: bytes, flags: list[str], torch_version: str = torch.__version__, ninja_version: str = ""
) -> str:
    """The build directory's name: ``name`` and a short hash of everything the compiled module depends on.

    Args:
        name: the extension name (``sampler_native_avx2``).
        source: the bytes of ``rollout.cpp``.
        flags: the compiler flags.
        torch_version: the torch version whose headers and ABI the module is built against.
        ninja_version: the ninja that builds it (ninja versions disagree about the format of the build log, so two of
            them sharing a directory would rebuild each other's builds).

    Returns:
        ``<name>_<12 hex digits>``.
    """
    digest = hashlib.sha256(source)
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    for part in (_RECIPE, torch_version, python, ninja_version, *flags, "ldflags", *_LDFLAGS):
        digest.update(b"\0" + part.encode())
    return f"{name}_{digest.hexdigest()[:12]}"


def build_directory(source: bytes | None = None) -> Path:
    """The directory the kernels are built in for ``source`` (default: this checkout's ``rollout.cpp``), this torch,
    this CPU and the ``ninja`` on PATH (created if missing)."""
    from torch.utils import cpp_extension  # noqa: PLC0415 - heavy, and only needed here

    name, flags = _flags()
    source = _SOURCE.read_bytes() if source is None else source
    dir_name = build_dir_name(name, source, flags, ninja_version=_ninja_version())
    return Path(cpp_extension._get_build_directory(dir_name, verbose=False))


def _ninja_version() -> str:
    _ensure_ninja_on_path()
    exe = shutil.which("ninja")
    if exe is None:
        return "none"
    try:
        return subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextlib.contextmanager
def build_lock(directory: Path, timeout_s: float | None = None):
    """Hold an exclusive ``flock`` on ``directory/sampler_build.lock``, waiting (one log line) while another
    process holds it.

    Args:
        directory: the build directory.
        timeout_s: give up after this many seconds (default :data:`BUILD_LOCK_TIMEOUT_S`).

    Raises:
        NativeUnavailable: the lock was not free within ``timeout_s``.
    """
    if fcntl is None:
        yield
        return
    timeout_s = BUILD_LOCK_TIMEOUT_S if timeout_s is None else timeout_s
    path = directory / BUILD_LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if not _try_flock(fd):
            log.warning("waiting for another process compiling the native kernels (%s)", directory)
            deadline = time.monotonic() + timeout_s
            while not _try_flock(fd):
                if time.monotonic() > deadline:
                    raise NativeUnavailable(
                        f"gave up after {timeout_s:.0f} s waiting for another process compiling the native kernels; "
                        f"if none is running, delete {path}"
                    )
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)  # releases the lock


def _try_flock(fd: int) -> bool:
    """Take the lock if it is free. A file system without ``flock`` (some network mounts) counts as free: the
    build then runs unserialized, as it would without this lock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as err:
        log.debug("cannot lock the native build directory (%s); building without the lock", err)
    return True


def _build():
    from torch.utils import cpp_extension  # noqa: PLC0415 - heavy, and only needed here

    name, flags = _flags()
    source = _SOURCE.read_bytes()
    build_dir = build_directory(source)
    with build_lock(build_dir):
        # Every builder of this directory holds our lock first, so torch's lock file here is left by a killed build
        # (torch would wait for it forever).
        stale = build_dir / "lock"
        if stale.exists():
            log.warning("removing %s, left by a native-kernel build that was killed", stale)
            stale.unlink(missing_ok=True)
        # Compile a copy kept in the build directory: ninja rebuilds when the command line changes, and it names the
        # source path, so checkouts at different paths would otherwise rebuild this directory in turn.
        copy = build_dir / _SOURCE.name
        if not copy.is_file() or copy.read_bytes() != source:
            tmp = copy.with_name(copy.name + ".tmp")
            tmp.write_bytes(source)
            os.replace(tmp, copy)
        if not any(build_dir.glob(f"{name}*.so")):
            log.info("compiling the native rollout kernels into %s (once per version, about a minute)", build_dir)
        return cpp_extension.load(
            name=name,
            sources=[str(copy)],
            extra_cflags=flags,
            extra_ldflags=list(_LDFLAGS),  # a copy: torch appends its own flags to the list
            build_directory=str(build_dir),
            verbose=False,
        )


class PFHeadLogProb(torch.autograd.Function):
    """log P_F ``[T, B]`` from the policy's raw output ``[T, B, out]`` at sampled states ``s`` → ``s_next``
    (``[T, B, d]``, no gradient of their own), with an optional extra drift ``[T, B, d]`` (the Langevin term, which
    may carry a gradient): the head (clip, drift, variance) and the Gaussian density in one native pass each way."""

    @staticmethod
    def forward(ctx, kernels, head_args: tuple, raw, s, s_next, extra):
        ctx.kernels, ctx.head_args = kernels, head_args
        ctx.save_for_backward(raw, s, s_next, extra)
        return kernels.pf_head_log_prob(raw.detach(), s, s_next, _detached(extra), *head_args)

    @staticmethod
    def backward(ctx, grad):
        raw, s, s_next, extra = ctx.saved_tensors
        d_raw, d_extra = ctx.kernels.pf_head_log_prob_backward(
            grad, raw.detach(), s, s_next, _detached(extra), *ctx.head_args
        )
        return None, None, d_raw, None, None, d_extra if ctx.needs_input_grad[5] else None


def _detached(x):
    return None if x is None else x.detach()


def usable_for(tensor: torch.Tensor) -> bool:
    """Whether the kernels apply to tensors like ``tensor`` (CPU float32)."""
    return tensor.device.type == "cpu" and tensor.dtype == torch.float32

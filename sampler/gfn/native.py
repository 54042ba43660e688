"""Native CPU kernels of the rollout hot path (``native/rollout.cpp``), compiled on first use.

On a CPU the sampling loop's cost is mostly fixed per-operation overhead: a policy step on a [300, 64] batch is
~15 small operations, each below ATen's parallel grain, so each runs on one core and pays 5–25 µs of dispatch for
a few µs of arithmetic. The native step runs the whole network and the state update for a chunk of rows per
thread in one call; the fused head computes log P_F (and its gradient) and the Brownian bridge's log P_B in one
pass over ``[T, B, d]`` instead of a dozen. Same formulas as the PyTorch path, equal to float32 rounding
(tests/test_native.py).

The kernels are compiled by ``torch.utils.cpp_extension`` (C++ compiler and ninja) into torch's extension cache
the first time a process needs them (about a minute; later processes load the cached build). ``model.native``:
``auto`` uses them when they build and falls back to the PyTorch path with one warning when they do not,
``true`` requires them, ``false`` never uses them. ``SAMPLER_NATIVE=0`` in the environment turns ``auto`` off.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import sys
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

MODES = ("auto", "true", "false")
_SOURCE = Path(__file__).with_name("native") / "rollout.cpp"
_lock = threading.Lock()
_module = None
_error: str | None = None


class NativeUnavailable(RuntimeError):
    """The native kernels could not be built or loaded here (the message says why)."""


def parse_mode(value) -> str:
    """``model.native`` as one of ``auto | true | false`` (YAML booleans accepted)."""
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
            raise NativeUnavailable(f"model.native=true, but the native kernels could not be built: {_error}")
        return _module


def _build():
    from torch.utils import cpp_extension  # noqa: PLC0415 - heavy, and only needed here

    name, flags = _flags()
    _ensure_ninja_on_path()
    build_dir = Path(cpp_extension._get_build_directory(name, verbose=False))
    if not any(build_dir.glob(f"{name}*.so")):
        log.info("compiling the native rollout kernels (once per machine, about a minute)")
    return cpp_extension.load(
        name=name,
        sources=[str(_SOURCE)],
        extra_cflags=flags,
        extra_ldflags=["-fopenmp"],
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

"""Checks on the ``launcher=`` choice of a ``scripts/train.py`` command line, made before Hydra starts.

Without them, ``launcher=slurm`` on a machine without SLURM fails with a stack trace from deep inside submitit,
and ``launcher=slurm`` without ``-m`` silently trains here, on this machine. Both become one line on stderr
(exit status 2) before anything is submitted. The launcher presets are in ``conf/launcher/``.
"""

from __future__ import annotations

import shutil
import subprocess

#: Launcher presets that submit to SLURM (``conf/launcher/<name>.yaml``).
SLURM_LAUNCHERS = ("slurm", "slurm_gpu")
#: Hydra flags that print something and start no run; the launcher is not used with them.
INFO_FLAGS = ("--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help", "--shell-completion", "-sc")
#: Seconds to wait for the SLURM controller to answer ``scontrol ping``.
PING_TIMEOUT_S = 10


def launcher_choice(argv: list[str]) -> str | None:
    """The launcher a command line selects (``launcher=slurm`` → ``"slurm"``), or None (none, or ``null``)."""
    choice = None
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if sep and key == "launcher":
            choice = value.strip() or None
    return None if choice in (None, "null", "none") else choice


def launcher_error(argv: list[str]) -> str | None:
    """The one-line error for the launcher that ``argv`` (the script's arguments) selects, or None when it can run.

    Args:
        argv: the command-line arguments after the script name.

    Returns:
        ``"error: launcher=...: ..."`` when the launcher cannot work here, else None.
    """
    choice = launcher_choice(argv)
    if choice is None or any(a.partition("=")[0] in INFO_FLAGS for a in argv):
        return None
    if not any(a in ("-m", "--multirun") for a in argv):
        return (
            f"error: launcher={choice} launches the jobs of a sweep and needs -m (multirun); without it the run "
            f"would start here, on this machine: add -m, or drop launcher={choice}"
        )
    if choice in SLURM_LAUNCHERS:
        problem = slurm_problem()
        if problem:
            return f"error: launcher={choice}: {problem}; nothing was submitted; use launcher=local to run here"
    return None


def slurm_problem() -> str | None:
    """Why no SLURM job can be submitted from here (no ``sbatch`` on PATH, or no controller answers), or None."""
    if shutil.which("sbatch") is None:
        return "no `sbatch` on PATH (SLURM is not installed here, or not on PATH)"
    if shutil.which("scontrol") is None:
        return "no `scontrol` on PATH to reach the SLURM controller"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=PING_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"the SLURM controller did not answer `scontrol ping` within {PING_TIMEOUT_S} s"
    except OSError as err:
        return f"`scontrol ping` could not run ({err})"
    if ping.returncode != 0 or " is UP" not in ping.stdout:
        said = next((line.strip() for line in (ping.stdout + ping.stderr).splitlines() if line.strip()), "")
        return f"no SLURM controller answers (`scontrol ping`: {said or f'exit status {ping.returncode}'})"
    return None

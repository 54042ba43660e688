"""argparse for the analysis scripts, answering bad arguments the way :mod:`sampler.app.cli` does: ``error: ...`` and
the usage line on stderr, exit status 2 (via :class:`sampler.app.cli.UsageError`)."""

from __future__ import annotations

import argparse

from sampler.app.cli import UsageError


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` that raises :class:`UsageError` instead of exiting on its own."""

    def error(self, message: str):
        raise UsageError(f"{message}\n{self.format_usage().strip()}")

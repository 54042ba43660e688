"""Looking at finished runs: find and group the run directories of a sweep (:mod:`~sampler.analysis.runs`),
tabulate and plot them across seeds (:mod:`~sampler.analysis.summary`), diff two runs
(:mod:`~sampler.analysis.diff`), and re-run one to check its metrics (:mod:`~sampler.analysis.reproduce`).

Everything here reads the run-directory contract of docs/design.md (``config_resolved.yaml``, ``manifest.json``,
``metrics.json``, ``metrics.csv``, ``.hydra/``) with plain Python, so ``summarize.py`` and ``diff_runs.py`` answer
without importing torch or Lightning; only a reproduction trains.
"""

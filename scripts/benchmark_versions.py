"""Side-by-side step timing of two checkouts: `python scripts/benchmark_versions.py OLD NEW OUT.json [ROUNDS]`.

Runs `scripts/benchmark.py` (one intra-op thread) from each checkout in turn — old, new, then new, old, ... so that a
drift of the machine's speed hits both alike — and writes the per-preset medians over rounds and their ratio
(``new_over_old``) with every round's raw records to OUT.json. ``PRESETS`` and ``STEPS`` in the environment choose the
presets (default ``tb,tb_lp,fl_subtb``) and the timed steps per run (default 30). A refactor that must not cost speed
is checked with it against the commit before it (docs/performance.md).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    old, new, out = argv[:3]
    rounds = int(argv[3]) if len(argv) == 4 else 3
    presets, steps = os.environ.get("PRESETS", "tb,tb_lp,fl_subtb"), os.environ.get("STEPS", "30")
    raw: dict[str, list] = {"old": [], "new": []}
    for r in range(rounds):
        order = (("old", old), ("new", new)) if r % 2 == 0 else (("new", new), ("old", old))
        for name, tree in order:
            path = f"{out}.{name}{r}.json"
            env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": "1"}
            cmd = [sys.executable, f"{tree}/scripts/benchmark.py", "--presets", presets, "--energies", "gmm25"]
            cmd += ["--steps", steps, "--warmup", "5", "--threads", "1", "--out", path]
            subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=tree)
            with open(path) as f:
                raw[name].append(json.load(f))
            os.remove(path)
    summary: dict[str, dict] = {}
    for name, runs in raw.items():
        for records in zip(*[run["records"] for run in runs]):
            row = summary.setdefault(records[0]["preset"], {})
            row[name] = statistics.median(rec["median_step_s"] for rec in records)
    for row in summary.values():
        row["new_over_old"] = row["new"] / row["old"]
    with open(out, "w") as f:
        json.dump({"rounds": rounds, "steps": int(steps), "summary": summary, "raw": raw}, f, indent=1)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Re-evaluate a checkpoint (SPEC §8): `python scripts/eval.py ckpt=RUN/checkpoints/last.ckpt [K=2000] [seed=N]
[out=metrics_eval.json] [plots=DIR] [device=cpu] [config=RUN/config_resolved.yaml]`. Prints the metrics as JSON.

By default the evaluation noise is the run's own at the checkpoint's step, so re-evaluating a finished run's
``last.ckpt`` reproduces its ``metrics.json`` exactly; ``seed=N`` draws other noise."""

import json
from pathlib import Path

from sampler.cli import load_trained, parse_args, run

USAGE = "usage: python scripts/eval.py ckpt=PATH [K=2000] [seed=N] [out=FILE.json] [plots=DIR] [device=cpu]"
KEYS = {"ckpt", "K", "seed", "out", "plots", "device", "config"}


def main(argv: list[str]) -> int:
    args = parse_args(argv, KEYS, ("ckpt",), USAGE)
    module, cfg, step = load_trained(args)
    from sampler.training.callbacks import run_evaluation

    plot = Path(args.plots) / f"eval_samples_{step:07d}.png" if args.get("plots") else None
    metrics, _ = run_evaluation(
        module,
        step,
        int(args.get("K", cfg.eval.K)),
        plot,
        noise_seed=int(args["seed"]) if "seed" in args else None,
        title=f"{Path(args.ckpt).name} at step {step}",
    )
    text = json.dumps(metrics, indent=2)
    if args.get("out"):
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    run(main)

"""Re-evaluate a checkpoint (SPEC §8): `python scripts/eval.py ckpt=RUN/checkpoints/last.ckpt [K=2000] [seed=0]
[out=metrics_eval.json] [plots=DIR] [device=cpu] [config=RUN/config_resolved.yaml]`. Prints the metrics as JSON."""

import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

import sampler.training  # noqa: F401  (registers the config resolvers)
from sampler.evaluation import evaluate, plot_samples
from sampler.training.checkpointing import CheckpointError
from sampler.training.config_check import ConfigError
from sampler.training.loading import load_module

USAGE = "usage: python scripts/eval.py ckpt=PATH [K=2000] [seed=0] [out=FILE.json] [plots=DIR] [device=cpu]"
KEYS = {"ckpt", "K", "seed", "out", "plots", "device", "config"}


def main(argv: list[str]) -> int:
    args = OmegaConf.from_cli(argv)
    unknown = set(args) - KEYS
    if unknown or "ckpt" not in args:
        print(
            f"error: {'unknown argument ' + ', '.join(sorted(unknown)) if unknown else 'ckpt= is required'}\n{USAGE}",
            file=sys.stderr,
        )
        return 2
    try:
        module, cfg, step = load_module(args.ckpt, args.get("config"), args.get("device", "cpu"))
    except (CheckpointError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    K = int(args.get("K", cfg.eval.K))
    seed = int(args.get("seed", cfg.seed))
    gen = torch.Generator(device=module.energy.device).manual_seed(seed)
    with torch.enable_grad() if module.gfn.langevin else torch.no_grad():
        metrics, samples = evaluate(module.gfn, module.energy, K=K, generator=gen, seed=seed)
    metrics["step"] = float(step)
    if args.get("plots"):
        plot_samples(
            module.energy,
            samples,
            Path(args.plots) / f"eval_samples_{step:07d}.png",
            exact=module.energy.sample(K, generator=gen).cpu() if module.energy.has_sampler else None,
            title=f"{Path(args.ckpt).name} at step {step}",
        )
    text = json.dumps(metrics, indent=2)
    if args.get("out"):
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

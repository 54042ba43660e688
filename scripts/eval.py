"""Re-evaluate a checkpoint (SPEC §8): `python scripts/eval.py ckpt=RUN/checkpoints/last.ckpt [K=2000] [seed=N]
[out=metrics_eval.json] [plots=DIR] [device=cpu] [config=RUN/config_resolved.yaml]`. Prints the metrics as JSON."""

import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

USAGE = "usage: python scripts/eval.py ckpt=PATH [K=2000] [seed=N] [out=FILE.json] [plots=DIR] [device=cpu]"
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
    if not Path(str(args.ckpt)).is_file():
        print(f"error: checkpoint not found: {args.ckpt}", file=sys.stderr)
        return 2
    import torch  # heavy imports only once the arguments are known to be good

    from sampler.evaluation import evaluate, plot_samples
    from sampler.training.callbacks import eval_seed
    from sampler.training.checkpointing import CheckpointError
    from sampler.training.config_check import ConfigError
    from sampler.training.loading import load_module

    try:
        module, cfg, step = load_module(args.ckpt, args.get("config"), args.get("device", "cpu"))
    except (CheckpointError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    K = int(args.get("K", cfg.eval.K))
    # By default the same evaluation noise as the run's own evaluation at this step, so the run's final
    # metrics.json is reproduced exactly; seed=N draws different noise.
    seed = int(args["seed"]) if "seed" in args else eval_seed(cfg.seed, step)
    gen = torch.Generator(device=module.energy.device).manual_seed(seed)
    with torch.enable_grad() if module.gfn.langevin else torch.no_grad():
        metrics, samples = evaluate(module.gfn, module.energy, K=K, generator=gen, seed=int(cfg.seed))
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

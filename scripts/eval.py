"""Re-evaluate a checkpoint (docs/spec.md §8): `python scripts/eval.py ckpt=RUN/checkpoints/last.ckpt [K=2000] [seed=N]
[out=metrics_eval.json] [plots=DIR] [device=cpu] [config=RUN/config_resolved.yaml] [trust=my.module.MyEnergy,...]`.
Prints the metrics as JSON.

By default the evaluation noise is the run's own at the checkpoint's step, so re-evaluating a finished run's
``last.ckpt`` reproduces its ``metrics.json`` exactly; ``seed=N`` draws other noise. The run config's
``_target_``s must be the platform's own classes or named in ``trust=``: building them runs their code."""

import json
from pathlib import Path

from sampler.app.cli import (
    MAX_SEED,
    device_arg,
    int_arg,
    load_trained,
    non_negative_int,
    parse_args,
    path_arg,
    run,
)

USAGE = (
    "usage: python scripts/eval.py ckpt=PATH [K=2000] [seed=N] [out=FILE.json] [plots=DIR] [device=cpu] "
    "[config=PATH] [trust=NAME,...]"
)
KEYS = {"ckpt", "K", "seed", "out", "plots", "device", "config", "trust"}


def main(argv: list[str]) -> int:
    args = parse_args(argv, KEYS, ("ckpt",), USAGE)
    K = int_arg(args, "K", minimum=2)
    seed = non_negative_int(args, "seed", maximum=MAX_SEED)
    out = path_arg(args, "out", "out")
    plots = path_arg(args, "plots", "dir")
    device = device_arg(args)

    def fits(cfg):  # before the checkpoint is read: an evaluation of K samples must fit here
        from sampler.training.tasks import task_of

        if task_of(cfg) == "ebm":
            from sampler.ebm.config import check_sampling_memory

            check_sampling_memory(cfg, K or int(cfg.eval.K), K or int(cfg.eval.K))
            return
        from sampler.training.memory import check_memory

        check_memory(cfg, device, K=K or int(cfg.eval.K), training=False, labels={"eval.K": "K"})

    module, cfg, step = load_trained(args, before_build=fits)
    from sampler.training.callbacks import run_evaluation

    plot = plots / f"eval_samples_{step:07d}.png" if plots is not None else None
    metrics, _ = run_evaluation(
        module,
        step,
        K or int(cfg.eval.K),
        plot,
        noise_seed=seed,
        title=f"{Path(args['ckpt']).name} at step {step}",
    )
    text = json.dumps(metrics, indent=2)
    if out is not None:
        from sampler.training.manifest import write_atomic

        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, (text + "\n").encode())  # never a half-written file
    print(text)
    return 0


if __name__ == "__main__":
    run(main)

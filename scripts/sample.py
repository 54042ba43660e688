"""Draw samples from a trained sampler: `python scripts/sample.py ckpt=RUN/checkpoints/last.ckpt n=1000
out=samples.pt [seed=0] [batch=10000] [device=cpu] [config=PATH] [trust=NAME,...]`. `out` ending in .pt (a tensor
[n, d]), .npy or .csv. `n` may be written 1e6; an `n` whose samples do not fit in memory here is refused.

From an energy-based model (a `task=ebm` run) it generates by Langevin MCMC: `method=noise|buffer|annealed` (from
uniform noise, from the PCD chain buffer, or annealed from temperature 10 to 1) or `method=gfn` (the GFN negative
sampler of an `ebm.negatives=gfn` run), `steps=N` Langevin steps; both default to the run's `ebm.generate`."""

import os

from sampler.app.cli import (
    MAX_SEED,
    UsageError,
    device_arg,
    load_trained,
    non_negative_int,
    parse_args,
    path_arg,
    positive_int,
    run,
)

USAGE = (
    "usage: python scripts/sample.py ckpt=PATH n=N out=FILE(.pt|.npy|.csv) [seed=0] [batch=10000] [device=cpu] "
    "[config=PATH] [trust=NAME,...] [method=noise|buffer|annealed|gfn] [steps=N] (method, steps: EBM checkpoints)"
)
KEYS = {"ckpt", "n", "out", "seed", "batch", "device", "config", "trust", "method", "steps"}
#: Arguments only an energy-based model's checkpoint takes.
EBM_KEYS = ("method", "steps")


def main(argv: list[str]) -> int:
    args = parse_args(argv, KEYS, ("ckpt", "n", "out"), USAGE)
    out = path_arg(args, "out", "out")
    if out.suffix not in (".pt", ".npy", ".csv"):
        raise UsageError(f"out={out} must end in .pt, .npy or .csv")
    n = positive_int(args, "n")
    batch = positive_int(args, "batch", 10000)
    seed = non_negative_int(args, "seed", maximum=MAX_SEED)
    device = device_arg(args)
    steps = positive_int(args, "steps")

    def fits(cfg):  # before the checkpoint is read: the [n, d] output and one batch's rollout must fit here
        from sampler.training.tasks import task_of

        if task_of(cfg) == "ebm":
            from sampler.ebm.config import check_ebm_method, check_sampling_memory

            check_ebm_method(cfg, args.get("method"))
            check_sampling_memory(cfg, n, batch)
            return
        given = [k for k in EBM_KEYS if k in args]
        if given:
            from sampler.training.config_check import ConfigError

            raise ConfigError(f"{given[0]}= is for energy-based models (task=ebm runs); {args['ckpt']} is a sampler's")
        from sampler.training.memory import check_sampling

        check_sampling(cfg, n, batch, device)

    module, cfg, step = load_trained(args, before_build=fits)
    import numpy as np
    import torch

    from sampler.training.tasks import task_of

    gen = torch.Generator(device=module.energy.device).manual_seed(int(cfg.seed) if seed is None else seed)
    if task_of(cfg) == "ebm":
        x = ebm_samples(module, n, batch, args.get("method"), steps, gen)
    else:
        x = torch.empty(n, module.energy.dim)
        # no gradient: ∇log r of the Langevin term is taken inside the energy's log_reward_and_grad
        with torch.no_grad():
            for start in range(0, n, batch):
                traj = module.gfn.rollout_forward(min(batch, n - start), generator=gen)
                x[start : start + traj.batch_size] = traj.terminal_states.cpu()
                del traj
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:  # a file object: np.save adds no second suffix
            if out.suffix == ".pt":
                torch.save(x, f)
            elif out.suffix == ".npy":
                np.save(f, x.numpy())
            else:
                np.savetxt(f, x.numpy(), delimiter=",")
        tmp.replace(out)  # never a half-written file
    finally:
        tmp.unlink(missing_ok=True)
    print(f"wrote {n} samples of dimension {x.shape[1]} from step {step} to {out}")
    return 0


def ebm_samples(module, n: int, batch: int, method: str | None, steps: int | None, generator):
    """``n`` samples ``[n, d]`` (CPU) of an energy-based model, ``batch`` chains at a time (``method=buffer`` draws
    at most ``ebm.buffer.capacity`` chains a call)."""
    import torch

    x = torch.empty(n, module.data.dim)
    start = 0
    while start < n:
        part, _ = module.sample(min(batch, n - start), method, generator=generator, n_steps=steps)
        x[start : start + part.shape[0]] = part.detach().cpu()
        start += part.shape[0]
    return x


if __name__ == "__main__":
    run(main)

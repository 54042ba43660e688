"""Draw samples from a trained sampler: `python scripts/sample.py ckpt=RUN/checkpoints/last.ckpt n=1000
out=samples.pt [seed=0] [batch=10000] [device=cpu] [config=PATH] [trust=NAME,...]`. `out` ending in .pt (a tensor
[n, d]), .npy or .csv. `n` may be written 1e6; an `n` whose samples do not fit in memory here is refused."""

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
    "[config=PATH] [trust=NAME,...]"
)
KEYS = {"ckpt", "n", "out", "seed", "batch", "device", "config", "trust"}


def main(argv: list[str]) -> int:
    args = parse_args(argv, KEYS, ("ckpt", "n", "out"), USAGE)
    out = path_arg(args, "out", "out")
    if out.suffix not in (".pt", ".npy", ".csv"):
        raise UsageError(f"out={out} must end in .pt, .npy or .csv")
    n = positive_int(args, "n")
    batch = positive_int(args, "batch", 10000)
    seed = non_negative_int(args, "seed", maximum=MAX_SEED)
    device = device_arg(args)

    def fits(cfg):  # before the checkpoint is read: the [n, d] output and one batch's rollout must fit here
        from sampler.training.memory import check_sampling

        check_sampling(cfg, n, batch, device)

    module, cfg, step = load_trained(args, before_build=fits)
    import numpy as np
    import torch

    gen = torch.Generator(device=module.energy.device).manual_seed(int(cfg.seed) if seed is None else seed)
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


if __name__ == "__main__":
    run(main)

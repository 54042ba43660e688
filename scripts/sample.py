"""Draw samples from a trained sampler: `python scripts/sample.py ckpt=RUN/checkpoints/last.ckpt n=1000
out=samples.pt [seed=0] [batch=10000] [device=cpu]`. `out` ending in .pt (a tensor [n, d]), .npy or .csv."""

from pathlib import Path

from sampler.cli import UsageError, load_trained, parse_args, run

USAGE = "usage: python scripts/sample.py ckpt=PATH n=N out=FILE(.pt|.npy|.csv) [seed=0] [batch=10000] [device=cpu]"
KEYS = {"ckpt", "n", "out", "seed", "batch", "device", "config"}


def main(argv: list[str]) -> int:
    args = parse_args(argv, KEYS, ("ckpt", "n", "out"), USAGE)
    out = Path(str(args.out))
    if out.suffix not in (".pt", ".npy", ".csv"):
        raise UsageError(f"out={out} must end in .pt, .npy or .csv")
    n = int(args.n)
    if n <= 0:
        raise UsageError(f"n must be a positive integer (got {n})")
    module, cfg, step = load_trained(args)
    import numpy as np
    import torch

    gen = torch.Generator(device=module.energy.device).manual_seed(int(args.get("seed", cfg.seed)))
    batch = int(args.get("batch", 10000))
    chunks = []
    with torch.enable_grad() if module.gfn.langevin else torch.no_grad():
        for start in range(0, n, batch):
            traj = module.gfn.rollout_forward(min(batch, n - start), generator=gen)
            chunks.append(traj.terminal_states.detach().cpu())
    x = torch.cat(chunks)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".pt":
        torch.save(x, out)
    elif out.suffix == ".npy":
        np.save(out, x.numpy())
    else:
        np.savetxt(out, x.numpy(), delimiter=",")
    print(f"wrote {n} samples of dimension {x.shape[1]} from step {step} to {out}")
    return 0


if __name__ == "__main__":
    run(main)

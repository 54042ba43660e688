"""Draw samples from a trained sampler: `python scripts/sample.py ckpt=RUN/checkpoints/last.ckpt n=1000
out=samples.pt [seed=0] [device=cpu]`. `out` ending in .pt (a tensor [n, d]), .npy or .csv."""

import sys
from pathlib import Path

from omegaconf import OmegaConf

USAGE = "usage: python scripts/sample.py ckpt=PATH n=N out=FILE(.pt|.npy|.csv) [seed=0] [batch=10000] [device=cpu]"
KEYS = {"ckpt", "n", "out", "seed", "batch", "device", "config"}


def main(argv: list[str]) -> int:
    args = OmegaConf.from_cli(argv)
    missing = [k for k in ("ckpt", "n", "out") if k not in args]
    unknown = set(args) - KEYS
    if missing or unknown:
        what = f"missing {', '.join(missing)}" if missing else f"unknown argument {', '.join(sorted(unknown))}"
        print(f"error: {what}\n{USAGE}", file=sys.stderr)
        return 2
    out = Path(str(args.out))
    if out.suffix not in (".pt", ".npy", ".csv"):
        print(f"error: out={out} must end in .pt, .npy or .csv", file=sys.stderr)
        return 2
    n = int(args.n)
    if n <= 0:
        print(f"error: n must be a positive integer (got {n})", file=sys.stderr)
        return 2
    import numpy as np

    if not Path(str(args.ckpt)).is_file():
        print(f"error: checkpoint not found: {args.ckpt}", file=sys.stderr)
        return 2
    import torch  # heavy imports only once the arguments are known to be good

    from sampler.training.checkpointing import CheckpointError
    from sampler.training.config_check import ConfigError
    from sampler.training.loading import load_module

    try:
        module, cfg, step = load_module(args.ckpt, args.get("config"), args.get("device", "cpu"))
    except (CheckpointError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
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
    sys.exit(main(sys.argv[1:]))

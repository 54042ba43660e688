"""Time torchgfn's hypergrid training iteration: `python torchgfn_hypergrid.py --ndim 2 --height 8 --batch-size 16
--loss tb [--iters 50] [--warmup 10]`.

Runs inside a separate environment that has torchgfn installed (never a dependency of this package); the discrete
benchmark (``scripts/benchmark.py --discrete``) starts it as a subprocess and alternates it with our own step. The
model is built as torchgfn's own hypergrid examples build it (``tutorials/examples/train_hypergrid_simple.py``):
``KHotPreprocessor``, an ``MLP`` forward policy (2 hidden layers of 256, ReLU) in a ``DiscretePolicyEstimator``, a
uniform backward policy (``DiscreteUniform``), ``TBGFlowNet`` with a learned log Z, or ``DBGFlowNet`` with a
``ScalarEstimator`` state flow (an MLP of the same width). One iteration is what their training loop does: sample
``batch`` trajectories on-policy with their log-probabilities, convert them to training samples, loss, backward,
Adam step (policy lr 1e-3; log Z lr 1e-1; the DB state flow at the policy's lr). No gradient clipping, no
validation, no replay buffer: the same work as one step of ``sampler.recipe.Recipe`` on ``DiscreteGFN``.

Prints one JSON object to stdout: per-iteration seconds (after warm-up), their median, the mean number of
transitions per iteration (the state evaluations of the policy), the settings and the torch/torchgfn versions.
One torch thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def build(ndim: int, height: int, R0: float, R1: float, R2: float, loss: str, hidden_dim: int, num_layers: int):
    """torchgfn's HyperGrid, GFlowNet and optimiser as its hypergrid example builds them.

    Returns:
        ``(env, gflownet, optimizer)``.
    """
    import torch
    from gfn.estimators import DiscretePolicyEstimator, ScalarEstimator
    from gfn.gflownet import DBGFlowNet, TBGFlowNet
    from gfn.gym import HyperGrid
    from gfn.preprocessors import KHotPreprocessor
    from gfn.utils.modules import MLP, DiscreteUniform

    env = HyperGrid(ndim=ndim, height=height, reward_fn_str="original", reward_fn_kwargs={"R0": R0, "R1": R1, "R2": R2})
    pre = KHotPreprocessor(height=height, ndim=ndim)
    module_pf = MLP(input_dim=pre.output_dim, output_dim=env.n_actions, hidden_dim=hidden_dim,
                    n_hidden_layers=num_layers)  # fmt: skip
    module_pb = DiscreteUniform(output_dim=env.n_actions - 1)
    pf = DiscretePolicyEstimator(module_pf, env.n_actions, preprocessor=pre, is_backward=False)
    pb = DiscretePolicyEstimator(module_pb, env.n_actions, preprocessor=pre, is_backward=True)
    if loss == "tb":
        gflownet = TBGFlowNet(pf=pf, pb=pb, init_logZ=0.0)
        opt = torch.optim.Adam(gflownet.pf_pb_parameters(), lr=1e-3)
        opt.add_param_group({"params": gflownet.logz_parameters(), "lr": 1e-1})
    else:
        module_logf = MLP(input_dim=pre.output_dim, output_dim=1, hidden_dim=hidden_dim, n_hidden_layers=num_layers)
        logF = ScalarEstimator(module=module_logf, preprocessor=pre)
        gflownet = DBGFlowNet(pf=pf, pb=pb, logF=logF)
        opt = torch.optim.Adam(gflownet.pf_pb_parameters(), lr=1e-3)
        opt.add_param_group({"params": gflownet.logF_parameters(), "lr": 1e-3})
    return env, gflownet, opt


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ndim", type=int, required=True)
    p.add_argument("--height", type=int, required=True)
    p.add_argument("--R0", type=float, default=1e-2)
    p.add_argument("--R1", type=float, default=0.5)
    p.add_argument("--R2", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--loss", choices=("tb", "db"), required=True)
    p.add_argument("--hidden-dim", type=int, default=256)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--iters", type=int, default=50, help="timed iterations")
    p.add_argument("--warmup", type=int, default=10, help="untimed iterations first")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.batch_size < 1:
        print("error: --iters and --batch-size must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    try:
        import gfn
        import torch
    except ImportError as err:
        print(f"error: this script runs in an environment with torchgfn installed ({err})", file=sys.stderr)
        return 2

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    env, gflownet, opt = build(args.ndim, args.height, args.R0, args.R1, args.R2, args.loss, args.hidden_dim,
                               args.num_layers)  # fmt: skip

    def iteration() -> int:
        trajectories = gflownet.sample_trajectories(env, n=args.batch_size, save_logprobs=True,
                                                    save_estimator_outputs=False)  # fmt: skip
        samples = gflownet.to_training_samples(trajectories)
        opt.zero_grad()
        loss = gflownet.loss(env, samples, recalculate_all_logprobs=False)
        loss.backward()
        opt.step()
        return int(trajectories.terminating_idx.sum())  # transitions, the stop included: policy evaluations

    times, rows = [], []
    for i in range(args.warmup + args.iters):
        t0 = time.perf_counter()
        n = iteration()
        dt = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(dt)
            rows.append(n)
    out = {
        "impl": "torchgfn",
        "ndim": args.ndim,
        "height": args.height,
        "R0": args.R0,
        "batch_size": args.batch_size,
        "loss": args.loss,
        "hidden_dim": args.hidden_dim,
        "num_layers": args.num_layers,
        "iters": args.iters,
        "warmup": args.warmup,
        "times_s": times,
        "median_s": statistics.median(times),
        "mean_transitions": sum(rows) / len(rows),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchgfn": getattr(gfn, "__version__", "unknown"),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

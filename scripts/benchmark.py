"""Benchmark training steps and evaluation: `python scripts/benchmark.py [--presets tb,tb_lp,...] [--energies gmm25]
[--steps 20] [--warmup 5] [--batch-size 300] [--repeats 1] [--out bench.json]`.

For each (preset, energy) it times, after warm-up, full training steps three ways: the platform's
``SamplerModule.train_step`` called directly (``median_step_s``), the same module trained by a real Lightning
``Trainer.fit`` with the run's callback (metrics rows, no evaluation or checkpoint inside the timed window;
``median_trainer_step_s``), and the bare core loop (rollout → loss → backward → the same Adam, no Lightning;
``median_core_step_s``), the two alternating step by step; ``lightning_overhead`` is the median of the paired
differences (trainer step − the bare step right after it) over the median bare step. Then one evaluation of
``eval.K`` samples (median of two after a first one that also computes the cached W2 floor, reported as
``first_eval_s``). Prints a table and writes JSON: ``{"machine": {...}, "records": [{"preset", "energy",
"median_step_s", "median_trainer_step_s", "median_core_step_s", "eval_s", "peak_rss_mb", ...}]}``. Performance is
measured here, never in unit tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

#: preset name -> config overrides (experiments are the paper rows; lp/mle/pis variants by group)
PRESETS = {
    "tb": ["experiment=tb"],
    "tb_lp": ["experiment=tb", "model=lp"],
    "fl_subtb": ["experiment=fl_subtb"],
    "vargrad": ["loss=vargrad"],
    "tb_expl_ls": ["experiment=tb_expl_ls"],
    "mle": ["loss=mle"],
    "pis": ["experiment=pis"],
}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _machine() -> dict:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def bench_one(preset: str, energy: str, steps: int, warmup: int, batch_size: int, device: str) -> dict:
    import torch
    from hydra import compose, initialize_config_dir

    import sampler.training  # noqa: F401
    from sampler.training.callbacks import run_evaluation
    from sampler.training.module import SamplerModule

    conf = str(Path(__file__).resolve().parents[1] / "conf")
    overrides = PRESETS[preset] + [f"energy={energy}", f"train.batch_size={batch_size}", "paths.run_dir=/tmp/bench"]
    if preset == "tb_expl_ls":
        overrides.append("local_search.every=10")  # a local-search call falls inside the timed window
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    torch.manual_seed(0)
    module = SamplerModule(cfg).to(device)
    module.offpolicy.to(device)
    opts = module.configure_optimizers()
    opts = opts[0] if isinstance(opts, tuple) else opts
    opts = opts if isinstance(opts, list) else [opts]

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        module.train_step(i, opts[0], opts[1] if len(opts) > 1 else None)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)

    # the bare core loop: what a user writes without the platform (README's core example), one step at a time
    from sampler.losses import get_loss

    gfn, loss_fn = module.gfn, get_loss(module.forward_loss_name, cfg.loss.lam)
    core_opt = module.configure_optimizers()  # the same Adam (groups, learning rates): the loop is what differs
    while isinstance(core_opt, (list, tuple)):
        core_opt = core_opt[0]
    gen = torch.Generator(device=device).manual_seed(0)

    def core_step() -> float:
        t0 = time.perf_counter()
        if module.forward_loss_name == "mle":
            traj = gfn.rollout_backward(module.energy.sample(batch_size, generator=gen), generator=gen)
        else:
            traj = gfn.rollout_forward(batch_size, generator=gen, reparam=module.reparam)
        loss = loss_fn(traj).mean()
        core_opt.zero_grad()
        loss.backward()
        core_opt.step()
        sync()
        return time.perf_counter() - t0

    same_algorithm = module.teaching is None and (
        (cfg.train.phases == "forward" and module.exploration(0) is None)
        or (module.forward_loss_name == "mle" and cfg.train.phases == "backward")
    )
    # Trainer steps and core steps alternate, so that both see the same state of a drifting machine
    trainer_times, core = _trainer_steps(module, cfg, warmup, steps, core_step)

    evals = []  # the first evaluation also draws the cached W2 floor (once per energy, K and seed)
    for _ in range(3):
        t0 = time.perf_counter()
        run_evaluation(module, steps, int(cfg.eval.K))
        sync()
        evals.append(time.perf_counter() - t0)
    return {
        "preset": preset,
        "energy": energy,
        "batch_size": batch_size,
        "T": int(cfg.model.T),
        "steps": steps,
        "median_step_s": statistics.median(times),
        "min_step_s": min(times),
        "median_core_step_s": statistics.median(core),
        "median_trainer_step_s": statistics.median(trainer_times),
        # paired: each trainer step against the bare-loop step that ran right after it (drift cancels); only where
        # the bare loop runs the same algorithm (forward steps without exploration, or MLE)
        "lightning_overhead": (
            statistics.median([a - b for a, b in zip(trainer_times, core, strict=True)]) / statistics.median(core)
            if same_algorithm
            else None
        ),
        "eval_s": statistics.median(evals[1:]),
        "first_eval_s": evals[0],
        "eval_K": int(cfg.eval.K),
        "peak_rss_mb": _peak_rss_mb(),
        "device": device,
    }


def _trainer_steps(module, cfg, warmup: int, steps: int, between) -> tuple[list[float], list[float]]:
    """Seconds per training step inside ``Trainer.fit`` (the run's settings and callback, as ``train`` builds them;
    evaluation and checkpoints pushed past the timed window), with ``between()`` — one bare-loop step, returning its
    own duration — run after every trainer step: (trainer step times, ``between`` times). A trainer step is the
    interval from the end of the previous ``between`` to the end of the next batch."""
    import tempfile
    import warnings

    import lightning as L
    import torch
    from lightning.pytorch.plugins.environments import LightningEnvironment

    from sampler.training.callbacks import RunCallback
    from sampler.training.loggers import build_run_log
    from sampler.training.metrics_csv import MetricsCSV
    from sampler.training.run import _quiet_lightning, _Steps

    _quiet_lightning()
    trainer_times: list[float] = []
    between_times: list[float] = []
    last = [0.0]

    class Clock(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            now = time.perf_counter()
            if trainer.global_step > warmup:
                trainer_times.append(now - last[0])
                between_times.append(between())
            elif trainer.global_step == warmup:
                between()  # warm the bare loop too
            last[0] = time.perf_counter()

    n = warmup + steps
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        runlog = build_run_log(cfg, run_dir, MetricsCSV(run_dir / "metrics.csv"), None)
        never = 10**9
        callback = RunCallback(run_dir, runlog, never, int(cfg.trainer.log_every_n_steps), never, 1, never, False)
        trainer = L.Trainer(
            max_steps=n,
            max_epochs=-1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[callback, Clock()],
            inference_mode=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            accelerator="cpu" if module.device.type == "cpu" else "gpu",
            devices=1,
            default_root_dir=tmp,
            plugins=[LightningEnvironment()],
        )
        loader = torch.utils.data.DataLoader(_Steps(n), batch_size=None, shuffle=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(module, train_dataloaders=loader)
        runlog.close(True)
    return trainer_times, between_times


def _percent(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}%"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="tb,tb_lp,fl_subtb", help=f"comma-separated, from {', '.join(PRESETS)}")
    p.add_argument("--energies", default="gmm25", help="comma-separated energy names")
    p.add_argument("--steps", type=int, default=20, help="timed steps per preset")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=300)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--out", default=None, help="write the JSON here")
    args = p.parse_args(argv)
    presets = [s for s in args.presets.split(",") if s]
    unknown = [s for s in presets if s not in PRESETS]
    if unknown:
        print(f"error: unknown preset {', '.join(unknown)}; choose from {', '.join(PRESETS)}", file=sys.stderr)
        return 2
    if args.steps < 1 or args.batch_size < 1:
        print("error: --steps and --batch-size must be positive", file=sys.stderr)
        return 2
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    records = []
    print(
        f"{'preset':12s} {'energy':10s} {'step s':>8s} {'trainer s':>9s} {'core s':>8s} {'overhead':>8s} "
        f"{'eval s':>8s} {'RSS MB':>8s}"
    )
    for energy in [e for e in args.energies.split(",") if e]:
        for preset in presets:
            r = bench_one(preset, energy, args.steps, args.warmup, args.batch_size, args.device)
            records.append(r)
            print(
                f"{preset:12s} {energy:10s} {r['median_step_s']:8.4f} {r['median_trainer_step_s']:9.4f} "
                f"{r['median_core_step_s']:8.4f} {_percent(r['lightning_overhead']):>8s} "
                f"{r['eval_s']:8.2f} {r['peak_rss_mb']:8.0f}",
                flush=True,
            )
    result = {"machine": _machine(), "records": records}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

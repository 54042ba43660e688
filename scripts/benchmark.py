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

``--discrete`` times discrete GFlowNet training on the hypergrid against torchgfn instead: `python
scripts/benchmark.py --discrete [--cases hypergrid8x2_b16_tb,...] [--rounds 5] [--steps 30] [--warmup 10]
[--torchgfn-python PATH | --no-anchor] [--out bench_discrete.json]`. Per case (grid, batch, objective; 2×256 ReLU
MLP, uniform P_B, Adam at lr 1e-3 and log Z at 1e-1, on-policy, one thread), each round runs torchgfn's iteration in
its own environment (``scripts/anchors/torchgfn_hypergrid.py``, timed inside that process, start-up excluded), then
``Recipe.step`` on ``DiscreteGFN`` with ``tabulate="auto"`` and with ``tabulate=False``, then this CPU's matmul floor:
one forward and one backward of the MLP's matmuls (plain ``addmm``/``mm``) at as many rows as the batch's
transitions (two networks for DB: policy and state flow). Rounds alternate so that every side sees the same state of a
shared machine. JSON: ``{"machine": {...}, "settings": {...}, "records": [{"case", "median_ours_s",
"median_ours_untabulated_s", "median_torchgfn_s", "speedup", "speedup_min", "speedup_max", "floor_s", ...}]}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
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
ROOT = Path(__file__).resolve().parents[1]


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


# ------------------------------------------------------------------------------ discrete GFlowNets against torchgfn
#: case name -> hypergrid and training batch; every case is a 2×256 ReLU MLP, uniform P_B, on-policy
DISCRETE_CASES = {
    "hypergrid8x2_b16_tb": {"ndim": 2, "height": 8, "batch_size": 16, "loss": "tb"},
    "hypergrid8x2_b16_db": {"ndim": 2, "height": 8, "batch_size": 16, "loss": "db"},
    "hypergrid8x2_b128_tb": {"ndim": 2, "height": 8, "batch_size": 128, "loss": "tb"},
    "hypergrid8x2_b128_db": {"ndim": 2, "height": 8, "batch_size": 128, "loss": "db"},
    "hypergrid8x4_b128_tb": {"ndim": 4, "height": 8, "batch_size": 128, "loss": "tb"},
    "hypergrid8x4_b128_db": {"ndim": 4, "height": 8, "batch_size": 128, "loss": "db"},
}
DISCRETE_R0 = 1e-2
HIDDEN_DIM, NUM_LAYERS = 256, 2
LR_POLICY, LR_LOG_Z = 1e-3, 1e-1  # the DB state-flow network trains at LR_POLICY (as torchgfn's example does)
ANCHOR_SCRIPT = Path(__file__).resolve().parent / "anchors" / "torchgfn_hypergrid.py"
TORCHGFN_PYTHON = os.environ.get("TORCHGFN_PYTHON", "/work/venvs/torchgfn/bin/python")
TORCHGFN_SETUP = (
    "python3.11 -m venv /work/venvs/torchgfn && /work/venvs/torchgfn/bin/pip install torch==2.13.0 torchgfn==2.4.1"
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def our_discrete_iterations(case: dict, tabulate, steps: int, warmup: int, seed: int) -> dict:
    """Time ``Recipe.step`` on a fresh ``DiscreteGFN`` for one case: ``warmup`` untimed steps, then ``steps`` timed.

    Args:
        case: an entry of ``DISCRETE_CASES``.
        tabulate: ``DiscreteGFN``'s ``tabulate`` (``"auto"`` or ``False``).
        steps, warmup: timed and untimed training steps.
        seed: seeds the initialisation and the sampling generator.

    Returns:
        ``{"times_s": [steps], "median_s", "mean_transitions" (per step, the stop included), "tabulated"}``.
    """
    import torch

    from sampler.discrete import DiscreteGFN, HyperGrid
    from sampler.losses import get_loss
    from sampler.recipe import Recipe, param_groups

    torch.manual_seed(seed)
    env = HyperGrid(case["ndim"], case["height"], R0=DISCRETE_R0)
    flow = "scalar" if case["loss"] == "tb" else "conditional"
    gfn = DiscreteGFN(env, hidden_dim=HIDDEN_DIM, num_layers=NUM_LAYERS, pb="uniform", flow=flow, tabulate=tabulate)
    B = case["batch_size"]
    recipe = Recipe(gfn, get_loss(case["loss"]), batch_size=B)
    lr_flow = LR_LOG_Z if flow == "scalar" else LR_POLICY
    opt = torch.optim.Adam(param_groups(gfn, lr_policy=LR_POLICY, lr_flow=lr_flow))
    gen = torch.Generator().manual_seed(seed)
    lengths = []
    sample = gfn.rollout_forward

    def counting_rollout(*args, **kwargs):
        traj = sample(*args, **kwargs)
        lengths.append(int(traj.mask.sum()))
        return traj

    gfn.rollout_forward = counting_rollout  # the recipe's own rollouts, counted (an integer sum per step)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        recipe.step(i, opt, generator=gen)
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
    timed = lengths[warmup:]
    return {
        "times_s": times,
        "median_s": statistics.median(times),
        "mean_transitions": sum(timed) / len(timed),
        "tabulated": gfn._use_tables(B),
    }


def anchor_iterations(python: str, case: dict, steps: int, warmup: int, seed: int) -> dict:
    """torchgfn's iteration for one case, timed inside its own process (``scripts/anchors/torchgfn_hypergrid.py``).

    Args:
        python: the interpreter of the environment that has torchgfn.
        case: an entry of ``DISCRETE_CASES``.
        steps, warmup, seed: as for :func:`our_discrete_iterations`.

    Returns:
        The anchor's JSON object (``times_s``, ``median_s``, ``mean_transitions``, versions, ...).

    Raises:
        RuntimeError: the anchor exited non-zero or printed no JSON (the message holds its last stderr line).
    """
    cmd = [
        python, str(ANCHOR_SCRIPT), "--ndim", str(case["ndim"]), "--height", str(case["height"]),
        "--R0", str(DISCRETE_R0), "--batch-size", str(case["batch_size"]), "--loss", case["loss"],
        "--hidden-dim", str(HIDDEN_DIM), "--num-layers", str(NUM_LAYERS), "--iters", str(steps),
        "--warmup", str(warmup), "--seed", str(seed),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the torchgfn anchor exited with {proc.returncode}: {last}")
    return json.loads(lines[-1])


def matmul_floor(rows: int, in_dim: int, out_dims: list[int], reps: int = 20) -> float:
    """Seconds of one forward and one backward pass of the matmuls of 2×256 MLPs on ``rows`` inputs, with plain
    ``torch.addmm``/``mm`` (no activations, masks or sampling): the work no implementation of the step can skip.

    Args:
        rows: inputs per network (the batch's transitions: one policy evaluation per state an action leaves).
        in_dim: input width (the K-hot encoding, ``ndim · height``).
        out_dims: output width of each network (``n_actions`` for the policy, 1 for a state flow).
        reps: timed repetitions after 3 untimed ones; the median is returned.

    Returns:
        Median seconds over ``reps``.
    """
    import torch

    gen = torch.Generator().manual_seed(0)
    H = HIDDEN_DIM
    nets = []
    for out in out_dims:
        shapes = [(rows, in_dim), (in_dim, H), (H,), (H, H), (H,), (H, out), (out,), (rows, out)]
        nets.append([torch.rand(s, generator=gen) - 0.5 for s in shapes])
    times = []
    for i in range(reps + 3):
        t0 = time.perf_counter()
        for x, W1, b1, W2, b2, W3, b3, g3 in nets:
            h1 = torch.addmm(b1, x, W1)
            h2 = torch.addmm(b2, h1, W2)
            torch.addmm(b3, h2, W3)
            torch.mm(h2.T, g3)  # dW3
            g2 = torch.mm(g3, W3.T)
            torch.mm(h1.T, g2)  # dW2
            g1 = torch.mm(g2, W2.T)
            torch.mm(x.T, g1)  # dW1
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _floor_flops(rows: int, in_dim: int, out_dims: list[int]) -> float:
    H = HIDDEN_DIM
    return sum(2.0 * rows * (2 * in_dim * H + 3 * H * H + 3 * H * out) for out in out_dims)


def our_step_breakdown(case: dict, tabulate, steps: int, warmup: int) -> dict:
    """Median seconds of the parts of our step, timed one after the other over ``steps`` steps: ``rollout`` (sampling
    with log-probabilities, ``rollout_forward``), ``sample_only`` (the same sampling without them, ``sample``: what the
    rollout spends before its autograd pass), ``loss_backward`` and ``adam``."""
    import torch

    from sampler.discrete import DiscreteGFN, HyperGrid
    from sampler.losses import get_loss
    from sampler.recipe import param_groups

    torch.manual_seed(0)
    env = HyperGrid(case["ndim"], case["height"], R0=DISCRETE_R0)
    flow = "scalar" if case["loss"] == "tb" else "conditional"
    gfn = DiscreteGFN(env, hidden_dim=HIDDEN_DIM, num_layers=NUM_LAYERS, flow=flow, tabulate=tabulate)
    opt = torch.optim.Adam(param_groups(gfn, LR_POLICY, LR_LOG_Z if flow == "scalar" else LR_POLICY))
    loss_fn, B = get_loss(case["loss"]), case["batch_size"]
    gen = torch.Generator().manual_seed(0)
    parts: dict[str, list[float]] = {"rollout": [], "sample_only": [], "loss_backward": [], "adam": []}
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with torch.no_grad():
            gfn.sample(B, generator=gen)
        t1 = time.perf_counter()
        traj = gfn.rollout_forward(B, generator=gen)
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(traj).mean().backward()
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        if i >= warmup:
            for key, dt in zip(parts, (t2 - t1, t1 - t0, t3 - t2, t4 - t3), strict=True):
                parts[key].append(dt)
    return {key: statistics.median(v) for key, v in parts.items()}


def _check_anchor(python: str) -> str | None:
    """None when ``python`` can import torchgfn, else a one-line reason."""
    if not Path(python).is_file():
        return (
            f"no torchgfn environment at {python}: create it with `{TORCHGFN_SETUP}`, pass --torchgfn-python, "
            "or --no-anchor to time ours only"
        )
    proc = subprocess.run([python, "-c", "import gfn, torch"], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return f"{python} cannot import torchgfn ({last}): install it with `{TORCHGFN_SETUP}`"
    return None


def bench_discrete_case(name: str, rounds: int, steps: int, warmup: int, anchor_python: str | None) -> dict:
    """One case over ``rounds`` alternating rounds (torchgfn, ours with ``tabulate="auto"``, ours untabulated, the
    matmul floor), then the breakdown of our step. The record of ``bench_discrete``'s JSON."""
    case = DISCRETE_CASES[name]
    per_round = []
    for r in range(rounds):
        row: dict = {"round": r}
        if anchor_python is not None:
            anchor = anchor_iterations(anchor_python, case, steps, warmup, seed=r)
            row.update(torchgfn_s=anchor["median_s"], torchgfn_transitions=anchor["mean_transitions"])
            row["versions"] = {"torch": anchor["torch"], "torchgfn": anchor["torchgfn"]}
        auto = our_discrete_iterations(case, "auto", steps, warmup, seed=r)
        row.update(ours_s=auto["median_s"], ours_transitions=auto["mean_transitions"], tabulated=auto["tabulated"])
        if auto["tabulated"]:
            untab = our_discrete_iterations(case, False, steps, warmup, seed=r)
        else:
            untab = auto  # "auto" chose the untabulated path: the same run
        row.update(ours_untabulated_s=untab["median_s"], ours_untabulated_transitions=untab["mean_transitions"])
        rows = max(1, round(untab["mean_transitions"]))
        in_dim = case["ndim"] * case["height"]
        outs = [case["ndim"] + 1] + ([1] if case["loss"] == "db" else [])
        row.update(floor_rows=rows, floor_s=matmul_floor(rows, in_dim, outs))
        row["floor_flops"] = _floor_flops(rows, in_dim, outs)
        per_round.append(row)

    def med(key: str) -> float:
        return statistics.median(x[key] for x in per_round)

    rec: dict = {"case": name, **case, "R0": DISCRETE_R0, "hidden_dim": HIDDEN_DIM, "num_layers": NUM_LAYERS}
    rec.update(rounds=rounds, steps=steps, warmup=warmup, tabulated=per_round[0]["tabulated"])
    rec.update(median_ours_s=med("ours_s"), median_ours_untabulated_s=med("ours_untabulated_s"))
    rec.update(mean_transitions_ours=statistics.mean(x["ours_untabulated_transitions"] for x in per_round))
    floor = med("floor_s")
    rec.update(floor_rows=round(rec["mean_transitions_ours"]), floor_s=floor)
    rec["floor_gflops"] = statistics.median(x["floor_flops"] / x["floor_s"] for x in per_round) / 1e9
    rec["ours_over_floor"] = rec["median_ours_s"] / floor
    rec["ours_untabulated_over_floor"] = rec["median_ours_untabulated_s"] / floor
    if anchor_python is not None:
        tg = med("torchgfn_s")
        ratios = [x["torchgfn_s"] / x["ours_s"] for x in per_round]
        ratios_untab = [x["torchgfn_s"] / x["ours_untabulated_s"] for x in per_round]
        rec.update(median_torchgfn_s=tg, torchgfn_over_floor=tg / floor, versions=per_round[0]["versions"])
        rec["mean_transitions_torchgfn"] = statistics.mean(x["torchgfn_transitions"] for x in per_round)
        rec.update(speedup=tg / rec["median_ours_s"], speedup_min=min(ratios), speedup_max=max(ratios))
        rec.update(speedup_untabulated=tg / rec["median_ours_untabulated_s"])
        rec.update(speedup_untabulated_min=min(ratios_untab), speedup_untabulated_max=max(ratios_untab))
        # time per transition, for trajectories of unequal mean length (the two initialisations differ)
        rec["speedup_per_transition"] = (tg / rec["mean_transitions_torchgfn"]) / (
            rec["median_ours_s"] / rec["mean_transitions_ours"]
        )
        rec["target_5x_met"] = rec["speedup"] >= 5.0
    rec["breakdown_s"] = {"untabulated": our_step_breakdown(case, False, steps, warmup)}
    if rec["tabulated"]:
        rec["breakdown_s"]["tabulated"] = our_step_breakdown(case, "auto", steps, warmup)
    rec["per_round"] = per_round
    return rec


def bench_discrete(args) -> int:
    """``--discrete``: every case of ``args.cases``; prints a table and writes the JSON (``args.out``)."""
    import torch

    names = [s for s in args.cases.split(",") if s]
    unknown = [s for s in names if s not in DISCRETE_CASES]
    if unknown or not names:
        print(f"error: unknown case {', '.join(unknown) or '(none)'}; choose from {', '.join(DISCRETE_CASES)}",
              file=sys.stderr)  # fmt: skip
        return 2
    anchor_python = None if args.no_anchor else args.torchgfn_python
    if anchor_python is not None:
        problem = _check_anchor(anchor_python)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    torch.set_num_threads(args.threads or 1)
    load_before = os.getloadavg()
    print(f"{'case':22s} {'ours s':>8s} {'untab s':>8s} {'torchgfn s':>10s} {'ratio':>6s} {'min-max':>11s} "
          f"{'floor s':>8s} {'ours/floor':>10s}")  # fmt: skip
    records = []
    for name in names:
        try:
            r = bench_discrete_case(name, args.rounds, args.steps, args.warmup, anchor_python)
        except RuntimeError as err:
            print(f"error: {name}: {err}", file=sys.stderr)
            return 1
        records.append(r)
        tg = f"{r['median_torchgfn_s']:10.4f}" if "speedup" in r else f"{'n/a':>10s}"
        ratio = f"{r['speedup']:6.1f} {r['speedup_min']:5.1f}-{r['speedup_max']:<5.1f}" if "speedup" in r else ""
        print(f"{name:22s} {r['median_ours_s']:8.4f} {r['median_ours_untabulated_s']:8.4f} {tg} {ratio:>18s} "
              f"{r['floor_s']:8.4f} {r['ours_over_floor']:10.2f}", flush=True)  # fmt: skip
    machine = {**_machine(), "cpu_model": _cpu_model(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    settings = {
        "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup, "R0": DISCRETE_R0,
        "hidden_dim": HIDDEN_DIM, "num_layers": NUM_LAYERS, "lr_policy": LR_POLICY, "lr_log_Z": LR_LOG_Z,
        "pb": "uniform", "anchor": None if anchor_python is None else str(ANCHOR_SCRIPT.relative_to(ROOT)),
    }  # fmt: skip
    result = {"machine": machine, "settings": settings, "records": records}
    if args.out:
        _write_json(Path(args.out), result)
        print(f"wrote {args.out}")
    return 0


def _write_json(path: Path, obj: dict) -> None:
    """Write ``obj`` to ``path`` through a temporary file in the same folder, so that no half-written file remains."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _percent(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}%"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="tb,tb_lp,fl_subtb", help=f"comma-separated, from {', '.join(PRESETS)}")
    p.add_argument("--energies", default="gmm25", help="comma-separated energy names")
    p.add_argument("--steps", type=int, default=None, help="timed steps per preset (20), or per round (30)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (5; --discrete: 10 per round)")
    p.add_argument("--batch-size", type=int, default=300)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--out", default=None, help="write the JSON here")
    p.add_argument("--discrete", action="store_true", help="discrete GFlowNets on the hypergrid against torchgfn")
    p.add_argument("--cases", default=",".join(DISCRETE_CASES), help="--discrete: comma-separated, from the default")
    p.add_argument("--rounds", type=int, default=5, help="--discrete: alternating rounds per case")
    p.add_argument("--torchgfn-python", default=TORCHGFN_PYTHON, help="--discrete: python of the torchgfn environment")
    p.add_argument("--no-anchor", action="store_true", help="--discrete: time ours only")
    args = p.parse_args(argv)
    if args.discrete:
        args.steps = 30 if args.steps is None else args.steps
        args.warmup = 10 if args.warmup is None else args.warmup
        if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
            print("error: --steps and --rounds must be >= 1 and --warmup >= 0", file=sys.stderr)
            return 2
        return bench_discrete(args)
    args.steps = 20 if args.steps is None else args.steps
    args.warmup = 5 if args.warmup is None else args.warmup
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

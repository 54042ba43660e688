"""The training platform end to end: every loss × energy composes, seeds, config errors, non-finite faults,
the learning and mode checks."""

from __future__ import annotations

import json

import pytest
import torch

from sampler.energies import Energy, NonFiniteRewardError
from sampler.training.config_check import ConfigError
from sampler.training.run import train

LOSSES = ["tb", "vargrad", "tb_avg", "db", "subtb", "fl_subtb", "pis", "mle"]
ENERGIES = ["gmm9", "gmm25", "gmm40", "funnel", "easy_funnel", "manywell"]


@pytest.mark.parametrize("energy", ENERGIES)
@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_composes_with_every_energy(tiny_cfg, loss, energy):
    metrics, objects = train(tiny_cfg(f"loss={loss}", f"energy={energy}"))
    run_dir = objects["run_dir"]
    assert metrics["step"] == 5
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved == metrics
    for name in ("config_resolved.yaml", "manifest.json", "metrics.csv", "samples.pt", "checkpoints/last.ckpt"):
        assert (run_dir / name).is_file(), name
    assert torch.load(run_dir / "samples.pt").shape == (64, objects["module"].energy.dim)


@pytest.mark.parametrize(
    "overrides",
    [
        ["exploration=constant"],
        ["exploration=linear"],
        ["exploration=cosine"],
        ["exploration=exponential"],
        ["model=mlp"],
        ["model=lp", "model.langevin_per_dim=true"],
        ["model.learned_variance=false"],
        ["model.learn_pb=true"],
        ["model.clipping=false", "model.zero_init=false"],
        ["train.phases=both_ways", "loss=subtb"],
        ["train.phases=both_ways", "loss=db", "train.backward_loss=vargrad"],
        ["train.phases=backward", "loss=tb"],
        ["train.grad_clip=1.0", "train.lr_milestones=[2,4]"],
        ["energy=manywell", "energy.dim=4", "loss=fl_subtb", "model=lp"],
    ],
)
def test_model_and_schedule_options_compose(tiny_cfg, overrides):
    metrics, _ = train(tiny_cfg(*overrides))
    assert metrics["step"] == 5 and torch.isfinite(torch.tensor(metrics["log_Z_rw"]))


def test_lr_milestones_and_groups_are_applied(tiny_cfg):
    _, objects = train(tiny_cfg("train.lr_milestones=[2]", "train.lr_gamma=0.5", "train.lr_flow=0.2"))
    groups = {g["name"]: g["lr"] for g in objects["trainer"].optimizers[0].param_groups}
    assert groups == pytest.approx({"policy": 5e-4, "flow": 0.1})


def _params(objects):
    return torch.cat([p.detach().flatten() for p in objects["module"].gfn.parameters()])


def test_seed_zero_is_honoured_and_seeds_differ(tiny_cfg, tmp_path):
    m0, o0 = train(tiny_cfg("seed=0", run_dir=tmp_path / "a"))
    m0b, o0b = train(tiny_cfg("seed=0", run_dir=tmp_path / "b"))
    m1, o1 = train(tiny_cfg("seed=1", run_dir=tmp_path / "c"))
    assert m0 == m0b
    assert torch.equal(_params(o0), _params(o0b))
    assert m0 != m1
    assert not torch.equal(_params(o0), _params(o1))


def test_training_never_touches_the_global_rng(tiny_cfg):
    cfg = tiny_cfg()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    from sampler.training.module import SamplerModule

    module = SamplerModule(cfg)
    after_init = torch.get_rng_state()  # model initialisation uses the global RNG (seeded by train())
    module.gfn.rollout_forward(8, generator=module._ensure_generator())
    assert torch.equal(torch.get_rng_state(), after_init)
    assert not torch.equal(before, after_init)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.batch_size=-1"], "train.batch_size must be a positive integer (got -1)"),
        (["trainer.max_steps=0"], "trainer.max_steps must be a positive integer (got 0)"),
        (["model.T=0"], "model.T must be a positive integer"),
        (["train.lr_flow=-0.1"], "train.lr_flow must be a positive number"),
        (["loss=fl_subtb", "model.flow=scalar"], "loss=fl_subtb needs model.flow in {forward_looking} (got scalar)"),
        (["loss=subtb", "model.flow=scalar"], "loss=subtb needs model.flow in {conditional, forward_looking}"),
        (
            ["model.flow=magic"],
            "model.flow=magic is not an option; choose one of: scalar, conditional, forward_looking",
        ),
        (["model.arch=transformer"], "model.arch=transformer is not an option; choose one of: pis, mlp"),
        (["train.phases=sideways"], "train.phases=sideways is not an option"),
        (["loss=mle", "train.phases=forward"], "loss=mle trains on backward trajectories only"),
        (["loss=pis", "train.phases=both_ways"], "train.backward_loss=pis cannot train on backward trajectories"),
        (["seed=-3"], "seed must be a non-negative integer"),
        (["eval.K=1"], "eval.K must be at least 2"),
        (["loss=vargrad", "train.batch_size=1"], "train.batch_size must be at least 2 (got 1)"),
        (
            [
                "train.phases=both_ways",
                "train.backward_loss=vargrad",
                "train.backward_source=exact",
                "train.batch_size=1",
            ],
            "vargrad centres δ on the batch mean",
        ),
        (["energy._target_=nowhere.Nothing"], "energy._target_=nowhere.Nothing could not be built"),
        (["+train.bach_size=3"], "train.bach_size is not a key of train (nothing would read it)"),
        (
            ["buffer=rank", "+buffer.beta=2"],
            "buffer.beta is not a key of buffer (_target_=sampler.buffers.RankBuffer; nothing would read it)",
        ),
        (["+trainer.max_stepz=3"], "trainer.max_stepz is not a Lightning Trainer argument"),
        (["exploration=linear", "exploration.horizon=0"], "exploration could not be built: exploration.horizon must"),
    ],
)
def test_bad_values_fail_before_training_with_one_line(tiny_cfg, tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        train(tiny_cfg(*overrides, run_dir=tmp_path / "bad"))
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "bad" / "checkpoints").exists()


class NaNEnergy(Energy):
    """A user energy that returns NaN in one quadrant: the run must stop, naming the step and the count."""

    dim = 2

    def log_reward(self, x):
        lr = -0.5 * x.pow(2).sum(-1)
        return torch.where(x[:, 0] > 0.5, torch.full_like(lr, float("nan")), lr)


def test_non_finite_log_reward_is_reported_with_step_and_count(tiny_cfg):
    cfg = tiny_cfg(f"energy._target_={__name__}.NaNEnergy")
    with pytest.raises(NonFiniteRewardError, match=r"non-finite log-reward at step 0 \(forward phase\): \d+ of 16"):
        train(cfg)


def test_different_config_in_an_existing_run_directory_is_refused(tiny_cfg, tmp_path):
    train(tiny_cfg(run_dir=tmp_path / "r"))
    with pytest.raises(ConfigError, match="different config.*loss.name"):
        train(tiny_cfg("loss=vargrad", run_dir=tmp_path / "r"))


def test_switching_the_progress_display_resumes_the_same_run(tiny_cfg, tmp_path):
    # The bar (or its line interval) is how a run is shown, not what it trains: the same run, reported finished.
    first, _ = train(tiny_cfg(run_dir=tmp_path / "r"))
    again, _ = train(tiny_cfg("trainer.enable_progress_bar=true", "+trainer.progress_every=2", run_dir=tmp_path / "r"))
    assert again == first
    with pytest.raises(ConfigError, match=r"different config \(train.lr_policy\)"):
        train(tiny_cfg("trainer.enable_progress_bar=true", "train.lr_policy=0.002", run_dir=tmp_path / "r"))


def test_a_shifted_anisotropic_gaussian_is_learned(tiny_cfg):
    # A target TB must move and reshape the reference process for: mean (1, -1), stds (0.5, 1.5), log Z = 0.
    cfg = tiny_cfg(
        "energy=gaussian",
        "energy.mean=[1.0,-1.0]",
        "energy.std=[0.5,1.5]",
        "model.T=50",
        "model.hidden_dim=64",
        "train.batch_size=256",
        "trainer.max_steps=300",
        "eval.every=300",
        "eval.K=2000",
        "checkpoint.every=300",
    )
    metrics, _ = train(cfg)
    assert metrics["dlogZ_rw"] < 0.02, metrics
    assert metrics["ess"] > 0.7, metrics


def test_gmm9_modes_are_all_found_by_langevin_tb(tiny_cfg):
    # The mode check: 9/9 modes of gmm9 and dlogZ_rw <= 0.1 within minutes on 2 CPU cores.
    cfg = tiny_cfg(
        "energy=gmm9",
        "model=lp",
        "model.T=100",
        "model.hidden_dim=64",
        "train.batch_size=300",
        "trainer.max_steps=250",
        "eval.every=250",
        "eval.K=2000",
        "checkpoint.every=250",
    )
    metrics, _ = train(cfg)
    assert metrics["mode_coverage"] == 1.0, metrics
    assert metrics["dlogZ_rw"] <= 0.1, metrics


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where no CUDA GPU is visible")
def test_a_gpu_trainer_without_a_gpu_is_one_line(tiny_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.accelerator=gpu needs a CUDA GPU .* use trainer=default"):
        train(tiny_cfg("trainer=gpu", run_dir=tmp_path / "gpu"))
    assert not (tmp_path / "gpu").exists()

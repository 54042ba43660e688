"""The training recipe as plain objects (sampler.recipe), the config groups that select their classes by
``_target_``, and the checks of those groups that need no YAML file."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sampler.adaptive_teacher import AdaptiveTeacher
from sampler.buffers import PERBuffer, RankBuffer, ReplayBuffer, RewardBuffer
from sampler.energies import GMM9
from sampler.exploration import LinearDecay
from sampler.gfn import DiffusionGFN
from sampler.local_search import MALA
from sampler.losses import trajectory_balance
from sampler.recipe import Recipe, param_groups
from sampler.training.config_check import ROOT_KEYS, ConfigError, check_config
from sampler.training.module import SamplerModule

ROOT = Path(__file__).resolve().parents[1]
SMALL_LS = ["local_search.n_steps=20", "local_search.burn_in=10", "local_search.every=4"]


@pytest.fixture(autouse=True)
def _one_thread(one_intra_op_thread):
    """Tiny tensors: a second intra-op thread only adds synchronisation."""


def _module(tiny_cfg, *overrides: str) -> SamplerModule:
    torch.manual_seed(0)
    return SamplerModule(tiny_cfg(*overrides))


def _optimisers(module: SamplerModule):
    opts = module.configure_optimizers()
    return opts[0] if isinstance(opts, tuple) else opts


# ----------------------------------------------------------------------------------------------- plain objects


def test_a_hand_built_recipe_trains_bit_for_bit_like_the_module(tiny_cfg):
    # experiment=tb_expl_ls: TB + linear exploration + rank buffer + MALA, both ways from the local-search buffer.
    module = _module(tiny_cfg, "experiment=tb_expl_ls", "energy=gmm9", "buffer.capacity=256", *SMALL_LS)
    gfn = copy.deepcopy(module.gfn)  # the same initial weights, trained by the plain loop below
    recipe = Recipe(
        gfn,
        trajectory_balance,
        exploration=LinearDecay(start=0.1, horizon=5000),
        phases="both_ways",
        replay=RankBuffer(256, 2, k=0.01),
        local_search=MALA(n_steps=20, burn_in=10, every=4),
        backward_source="local_search",
        batch_size=16,
    )
    opt = torch.optim.Adam(param_groups(gfn, lr_policy=1e-3, lr_flow=1e-1))
    gen = torch.Generator().manual_seed(0)
    (module_opt,) = _optimisers(module)
    for step in range(6):
        ours = recipe.step(step, opt, generator=gen)
        theirs_loss = module.train_step(step, module_opt)
        assert torch.equal(ours["loss"], theirs_loss), step
        assert ours["phase"] == module.stats["phase"] == ("forward" if step % 2 == 0 else "backward")
    for (name, a), b in zip(gfn.state_dict().items(), module.gfn.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert recipe.stats() == module.offpolicy.stats()
    assert recipe.stats()["ls_buffer_size"] > 0 and recipe.stats()["buffer_size"] == 3 * 16


def test_recipe_state_dict_resumes_a_plain_loop_bit_for_bit():
    def make():
        torch.manual_seed(0)
        energy = GMM9()
        gfn = DiffusionGFN(energy, T=8, hidden_dim=16, t_scale=5.0, learned_variance=False)
        teacher = AdaptiveTeacher(DiffusionGFN(energy, T=8, hidden_dim=16, t_scale=5.0, learned_variance=False))
        recipe = Recipe(gfn, "tb", replay=PERBuffer(200, 2), backward_source="buffer", teacher=teacher, batch_size=16)
        opt = torch.optim.Adam(param_groups(gfn))
        teacher_opt = torch.optim.Adam(teacher.param_groups(1e-3, 1e-1))
        return recipe, opt, teacher_opt

    a, opt_a, topt_a = make()
    gen_a = torch.Generator().manual_seed(1)
    for step in range(4):
        a.step(step, opt_a, topt_a, generator=gen_a)
    saved = copy.deepcopy(
        (a.state_dict(), a.gfn.state_dict(), a.teacher.gfn.state_dict(), opt_a.state_dict(), topt_a.state_dict())
    )
    gen_state = gen_a.get_state()
    for step in range(4, 8):
        stats_a = a.step(step, opt_a, topt_a, generator=gen_a)

    b, opt_b, topt_b = make()
    b.load_state_dict(saved[0])
    b.gfn.load_state_dict(saved[1])
    b.teacher.gfn.load_state_dict(saved[2])
    opt_b.load_state_dict(saved[3])
    topt_b.load_state_dict(saved[4])
    gen_b = torch.Generator().manual_seed(1)
    gen_b.set_state(gen_state)
    for step in range(4, 8):
        stats_b = b.step(step, opt_b, topt_b, generator=gen_b)
    shares = [stats_a[k] for k in ("phase", "share_forward", "share_teacher", "share_replay")]
    assert shares == ["replay", 0.5, 0.25, 0.25]
    for key in ("loss", "teacher_loss", "log_Z"):
        assert torch.equal(stats_a[key], stats_b[key]), key
    assert torch.equal(a.offpolicy.threshold, b.offpolicy.threshold)
    assert torch.equal(a.offpolicy.buffer.state_dict()["x"], b.offpolicy.buffer.state_dict()["x"])


def test_param_groups_name_every_parameter_once():
    gfn = DiffusionGFN(GMM9(), T=4, hidden_dim=8, learn_pb=True)
    groups = param_groups(gfn, lr_policy=1e-3, lr_flow=0.1, lr_back=1e-4)
    assert [(g["name"], g["lr"]) for g in groups] == [("policy", 1e-3), ("flow", 0.1), ("backward", 1e-4)]
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in gfn.parameters())
    gfn.extra = torch.nn.Linear(2, 2)  # a parameter no group names would never be trained
    with pytest.raises(RuntimeError, match=r"parameter groups cover \d+ of \d+ GFN parameters"):
        param_groups(gfn)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(phases="both_ways", backward_source="buffer"), "backward_source=buffer needs a replay buffer"),
        (
            dict(phases="both_ways", backward_source="local_search", replay=RankBuffer(10, 2)),
            "backward_source=local_search needs a local search",
        ),
        (dict(phases="sideways"), "train.phases must be one of forward, backward, both_ways"),
        (dict(backward_source="elsewhere"), "backward_source must be one of exact, buffer, local_search"),
    ],
)
def test_a_recipe_missing_an_object_it_needs_is_refused(kwargs, message):
    gfn = DiffusionGFN(GMM9(), T=4, hidden_dim=8)
    with pytest.raises(ValueError, match=message):
        Recipe(gfn, trajectory_balance, **kwargs)


def test_the_readme_recipe_runs_without_lightning_or_hydra(tmp_path):
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- test:recipe-example -->\n```python\n(.*?)```", text, re.S)
    assert m, "README has no ```python block after <!-- test:recipe-example -->"
    code = m.group(1)
    shrink = {  # the preset's budget, shrunk to a few seconds
        "range(25_000)": "range(6)",
        "T=100": "T=10",
        "MALA()": "MALA(n_steps=20, burn_in=10)",
        'backward_source="local_search")': 'backward_source="local_search", batch_size=64)',
    }
    for old, new in shrink.items():
        assert code.count(old) == 1, old
        code = code.replace(old, new)
    code += (
        "import sys\n"
        "assert not {'lightning', 'hydra', 'omegaconf'} & set(sys.modules), 'the recipe imported the platform'\n"
        "s = recipe.stats()\n"
        "print(stats['phase'], s['buffer_size'], s['ls_buffer_size'] > 0, float(stats['loss']) >= 0)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["backward", "192.0", "True", "True"]  # three forward batches of 64 stored


# ------------------------------------------------------------------------------------------------ config groups


@pytest.mark.parametrize(
    "option, cls",
    [("uniform", ReplayBuffer), ("reward", RewardBuffer), ("rank", RankBuffer), ("per", PERBuffer)],
)
def test_each_buffer_option_builds_its_class_with_the_energy_dim(tiny_cfg, option, cls):
    module = _module(tiny_cfg, f"buffer={option}", "buffer.capacity=32", "energy=funnel")
    buf = module.offpolicy.buffer
    assert type(buf) is cls and (buf.capacity, buf.dim) == (32, 10)
    assert buf.keyed_by == ("teacher_reward" if option == "per" else "log_reward")


def test_none_options_build_nothing(tiny_cfg):
    cfg = tiny_cfg()
    assert {g: OmegaConf.to_container(cfg[g]) for g in ("buffer", "local_search", "teacher")} == {
        "buffer": {},
        "local_search": {},
        "teacher": {},
    }
    module = _module(tiny_cfg)
    assert module.offpolicy.buffer is None and module.offpolicy.local_search is None and module.teaching is None


def test_the_teacher_group_builds_a_teacher_with_its_own_network(tiny_cfg):
    module = _module(tiny_cfg, "experiment=at_teacher", "teacher.alpha=0.25")
    assert isinstance(module.teaching, AdaptiveTeacher) and module.teaching.alpha == 0.25
    assert module.teaching.gfn is module.teacher_gfn and module.teacher_gfn is not module.gfn
    assert module.recipe.teacher is module.teaching


def test_a_new_buffer_class_is_one_target_away(tiny_cfg):
    # A user buffer: any ReplayBuffer subclass, selected by _target_ with its own options checked by its signature.
    cfg = tiny_cfg(
        "buffer=rank",
        "buffer._target_=test_recipe.HalfRankBuffer",
        "train.phases=both_ways",
        "train.backward_source=buffer",
    )
    check_config(cfg)
    torch.manual_seed(0)
    assert type(SamplerModule(cfg).offpolicy.buffer) is HalfRankBuffer


class HalfRankBuffer(RankBuffer):
    """Rank-prioritised with k halved (a stand-in for a user's buffer)."""

    def __init__(self, capacity: int, dim: int, eviction: str = "fifo", device="cpu", k: float = 0.01):
        super().__init__(capacity, dim, eviction, device, k / 2)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["local_search=mala", "+local_search.n_step=3"], "local_search.n_step is not a key of local_search"),
        (["buffer=rank", "+buffer.dim=3"], "buffer.dim is set at run time; remove it from the config"),
        (["buffer=rank", "buffer._target_=sampler.buffers.Nowhere"], "buffer._target_=sampler.buffers.Nowhere could"),
        (["buffer=rank", "buffer._target_=sampler.local_search.MALA"], "MALA is not a sampler.buffers.base.Replay"),
        (["buffer=rank", "buffer._partial_=false"], "gets dim at run time: set buffer._partial_=true"),
        (["+teacher.alpha=0.5"], "teacher.alpha is not a key of teacher=none (nothing would read it)"),
        (
            ["teacher=adaptive", "buffer=uniform", "train.backward_source=buffer"],
            "use buffer=per (got buffer _target_=sampler.buffers.ReplayBuffer)",
        ),
        (["buffer=per", "loss=fl_subtb"], "buffer._target_=sampler.buffers.PERBuffer keys samples by the student's"),
        (["experiment=at_teacher", "teacher.eps=0"], "teacher.eps must be a positive number (got 0)"),
        (["local_search=mala", "local_search.every=0"], "local_search.every must be a positive integer (got 0)"),
    ],
)
def test_group_keys_and_classes_are_checked_from_the_target(tiny_cfg, overrides, message):
    with pytest.raises(ConfigError) as err:
        check_config(tiny_cfg(*overrides))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_checks_read_no_yaml_file(tiny_cfg, monkeypatch):
    # An installed wheel has no conf/ tree: the checks use the composed config and the classes only.
    cfg = tiny_cfg("experiment=tb_expl_ls", "+train.bach_size=3")

    def no_files(*args, **kwargs):
        raise AssertionError("config_check read a file")

    monkeypatch.setattr(OmegaConf, "load", no_files)
    with pytest.raises(ConfigError, match="train.bach_size is not a key of train"):
        check_config(cfg)


def test_root_key_lists_match_the_composed_defaults(tiny_cfg):
    cfg = tiny_cfg()
    assert {section: sorted(cfg[section]) for section in ROOT_KEYS} == {k: sorted(v) for k, v in ROOT_KEYS.items()}


def test_group_options_instantiate_standalone(tiny_cfg):
    # The YAML files are the objects' keyword arguments, nothing else: instantiate() builds them outside the module.
    cfg = tiny_cfg("experiment=tb_expl_ls", "buffer.capacity=8", "local_search.capacity=8")
    buf = instantiate(cfg.buffer)(dim=3)
    search = instantiate(cfg.local_search)
    assert (type(buf), buf.dim, buf.k) == (RankBuffer, 3, 0.01)
    assert (type(search), search.n_steps, search.every, search.capacity) == (MALA, 200, 100, 8)

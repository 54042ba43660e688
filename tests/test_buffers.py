"""Replay buffers (docs/spec.md §5): storage and eviction, exact priority weights, fresh draws, checkpoint state."""

import math

import pytest
import torch

from sampler.buffers import RankBuffer, ReplayBuffer, RewardBuffer

ALL = [ReplayBuffer, RewardBuffer, RankBuffer]


def _labelled(values) -> tuple[torch.Tensor, torch.Tensor]:
    """States whose single coordinate is the label, and keys given by ``values`` (float list)."""
    key = torch.as_tensor(values, dtype=torch.float32)
    return torch.arange(len(values), dtype=torch.float32)[:, None], key


def _stored(buf: ReplayBuffer) -> dict[str, torch.Tensor]:
    s = buf.state_dict()
    n = int(s["size"])
    return {"x": s["x"][:n], "key": s["key"][:n], "id": s["id"][:n]}


def _binomial_ok(count: int, n: int, p: float, z: float = 5.0) -> bool:
    return abs(count - n * p) <= z * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("cls", ALL)
def test_first_add_stores_each_entry_once(cls):
    buf = cls(capacity=100, dim=3)
    assert buf.add(torch.randn(7, 3), torch.randn(7)) == 7
    assert len(buf) == 7
    assert buf.weights().shape == (7,)


def test_fifo_overwrites_the_oldest_entries_first():
    buf = ReplayBuffer(capacity=5, dim=1)
    buf.add(torch.arange(3.0)[:, None], torch.zeros(3))
    buf.add(torch.arange(3.0, 7.0)[:, None], torch.zeros(4))  # 0 and 1 go, oldest first
    assert len(buf) == 5
    assert sorted(_stored(buf)["x"][:, 0].tolist()) == [2.0, 3.0, 4.0, 5.0, 6.0]
    buf.add(torch.tensor([[7.0]]), torch.zeros(1))  # then 2
    assert sorted(_stored(buf)["x"][:, 0].tolist()) == [3.0, 4.0, 5.0, 6.0, 7.0]


def test_fifo_batch_larger_than_capacity_keeps_its_newest_entries():
    buf = ReplayBuffer(capacity=4, dim=1)
    buf.add(torch.tensor([[-1.0]]), torch.zeros(1))
    assert buf.add(torch.arange(10.0)[:, None], torch.zeros(10)) == 4
    assert sorted(_stored(buf)["x"][:, 0].tolist()) == [6.0, 7.0, 8.0, 9.0]


def test_evict_lowest_keeps_the_top_capacity_keys():
    g = torch.Generator().manual_seed(0)
    buf = RankBuffer(capacity=50, dim=2, eviction="lowest")
    all_keys = []
    for n in (30, 40, 7, 120, 1):
        key = torch.randn(n, generator=g).round(decimals=1)  # plenty of ties
        buf.add(torch.randn(n, 2, generator=g), key)
        all_keys.append(key)
    keys = torch.cat(all_keys)  # insertion id = position in this sequence
    expected_ids = sorted(range(len(keys)), key=lambda i: (-keys[i].item(), i))[:50]  # equal keys: older stays
    assert len(buf) == 50
    assert sorted(_stored(buf)["id"].tolist()) == sorted(expected_ids)
    assert torch.equal(_stored(buf)["key"].sort(descending=True).values, keys.sort(descending=True).values[:50])


def test_evict_lowest_drops_new_entries_below_everything_stored():
    buf = ReplayBuffer(capacity=3, dim=1, eviction="lowest")
    buf.add(*_labelled([1.0, 2.0, 3.0]))
    assert buf.add(torch.tensor([[9.0]]), torch.tensor([0.5])) == 0
    assert buf.add(torch.tensor([[9.0]]), torch.tensor([1.0])) == 0  # a tie keeps the older entry
    assert buf.add(torch.tensor([[8.0], [9.0]]), torch.tensor([5.0, 0.0])) == 1
    stored = _stored(buf)
    assert sorted(stored["key"].tolist()) == [2.0, 3.0, 5.0]
    assert 8.0 in stored["x"][:, 0].tolist()


def test_rank_weights_are_exactly_one_over_kn_plus_rank():
    g = torch.Generator().manual_seed(0)
    buf = RankBuffer(capacity=64, dim=1, k=0.01)
    keys = torch.randint(0, 10, (100,), generator=g).float()  # many ties, and FIFO wraps around
    for chunk in keys.split(17):
        buf.add(torch.zeros(len(chunk), 1), chunk)
    stored = _stored(buf)
    N = len(buf)
    # Reference: rank 0 = highest key, equal keys ranked by insertion order (older first).
    order = sorted(range(N), key=lambda i: (-stored["key"][i].item(), stored["id"][i].item()))
    expected = torch.empty(N, dtype=torch.float64)
    for rank, i in enumerate(order):
        expected[i] = 1.0 / (0.01 * N + rank)
    assert buf.weights().dtype == torch.float64
    assert torch.equal(buf.weights(), expected)


def test_reward_weights_are_proportional_to_exp_beta_key_even_for_huge_keys():
    key = torch.tensor([1e4, 1e4 - 1.0, 1e4 - 3.5, -1e4])
    buf = RewardBuffer(capacity=10, dim=1, beta=0.7)
    buf.add(torch.zeros(4, 1), key)
    w = buf.weights()
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w / w.sum(), torch.softmax(0.7 * key.double(), 0), rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("cls", [RankBuffer, RewardBuffer])
def test_a_new_high_priority_entry_is_drawn_on_the_very_next_sample(cls):
    # The reference pre-draws a whole pass of indices, so a new entry waits up to N/B calls; here it must appear
    # at once, at its normalised weight (rank: ≈ 2 %; reward: e⁵/(e⁵ + 1000) ≈ 13 %).
    g = torch.Generator().manual_seed(0)
    buf = cls(capacity=2000, dim=1)  # k = 0.01, β = 1
    buf.add(torch.zeros(1000, 1), torch.zeros(1000))
    buf.sample(64, generator=g)
    buf.add(torch.ones(1, 1), torch.tensor([5.0]))
    p = (buf.weights()[-1] / buf.weights().sum()).item()
    x, key = buf.sample(2000, generator=g)
    hits = int((x[:, 0] == 1.0).sum())
    assert hits > 0 and _binomial_ok(hits, 2000, p)
    assert torch.equal(key[x[:, 0] == 1.0], torch.full((hits,), 5.0))


@pytest.mark.parametrize("cls", ALL)
def test_sampling_frequencies_follow_the_normalised_weights(cls):
    # Pearson χ² over 60 cells (59 dof: mean 59, sd 10.9); 59 + 5 sd ≈ 113.
    g = torch.Generator().manual_seed(0)
    buf = cls(capacity=60, dim=1)
    buf.add(torch.arange(60.0)[:, None], torch.linspace(-2, 2, 60))
    n = 30000
    x, _ = buf.sample(n, generator=g)
    counts = torch.bincount(x[:, 0].long(), minlength=60).double()
    expected = n * buf.weights() / buf.weights().sum()
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 113, chi2


@pytest.mark.parametrize("cls", ALL)
def test_state_round_trips_through_a_weights_only_checkpoint(cls, tmp_path):
    g = torch.Generator().manual_seed(0)
    buf = cls(capacity=32, dim=2)
    for _ in range(3):  # wraps the FIFO pointer
        buf.add(torch.randn(13, 2, generator=g), torch.randn(13, generator=g))
    torch.save(buf.state_dict(), tmp_path / "buf.pt")
    fresh = cls(capacity=32, dim=2)
    fresh.load_state_dict(torch.load(tmp_path / "buf.pt", weights_only=True))
    assert len(fresh) == len(buf) and torch.equal(fresh.weights(), buf.weights())
    a = buf.sample(100, generator=torch.Generator().manual_seed(3))
    b = fresh.sample(100, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # Insertion order and the FIFO pointer are restored too: the same next add evicts the same entries.
    new = torch.randn(5, 2, generator=g), torch.randn(5, generator=g)
    buf.add(*new)
    fresh.add(*new)
    for k, v in buf.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_loading_a_checkpoint_with_other_settings_names_the_setting():
    state = ReplayBuffer(capacity=8, dim=2).state_dict()
    with pytest.raises(ValueError, match="buffer\\.capacity"):
        ReplayBuffer(capacity=16, dim=2).load_state_dict(state)
    with pytest.raises(ValueError, match="buffer\\.eviction"):
        ReplayBuffer(capacity=8, dim=2, eviction="lowest").load_state_dict(state)


@pytest.mark.parametrize("cls", ALL)
def test_sampling_is_reproducible_and_leaves_the_global_rng_alone(cls):
    buf = cls(capacity=100, dim=2)
    buf.add(torch.randn(100, 2, generator=torch.Generator().manual_seed(0)), torch.linspace(0, 3, 100))
    global_state = torch.get_rng_state()
    a = buf.sample(50, generator=torch.Generator().manual_seed(1))
    b = buf.sample(50, generator=torch.Generator().manual_seed(1))
    c = buf.sample(50, generator=torch.Generator().manual_seed(2))
    assert torch.equal(torch.get_rng_state(), global_state)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_keys_are_rejected_with_their_count(bad):
    buf = RewardBuffer(capacity=10, dim=1)
    key = torch.tensor([0.0, bad, 1.0, bad])
    with pytest.raises(ValueError, match="2 of 4 keys are non-finite"):
        buf.add(torch.zeros(4, 1), key)
    assert len(buf) == 0


def test_sampling_an_empty_buffer_is_a_clear_error():
    with pytest.raises(RuntimeError, match="empty"):
        RankBuffer(capacity=10, dim=1).sample(4)


def test_stats_report_size_keys_and_effective_sample_size():
    buf = RankBuffer(capacity=10, dim=1)
    assert buf.stats()["size"] == 0 and math.isnan(buf.stats()["key_mean"])
    buf.add(torch.zeros(4, 1), torch.tensor([1.0, 2.0, 3.0, 6.0]))
    s = buf.stats()
    assert (s["size"], s["key_mean"], s["key_max"], s["key_min"]) == (4.0, 3.0, 6.0, 1.0)
    w = buf.weights()
    assert s["ess"] == pytest.approx((w.sum() ** 2 / (w**2).sum()).item()) and 1 <= s["ess"] < 4
    assert "ess" not in ReplayBuffer(capacity=10, dim=1).stats()


@pytest.mark.parametrize(
    "kw, key",
    [
        (dict(capacity=0), "buffer.capacity must be a positive integer \\(got 0\\)"),
        (dict(eviction="random"), "buffer.eviction"),
        (dict(k=0.0), "buffer.k"),
    ],
)
def test_bad_settings_name_the_config_key(kw, key):
    with pytest.raises(ValueError, match=key):
        RankBuffer(**{"capacity": 10, "dim": 1, **kw})


def test_wrong_shapes_are_refused():
    buf = ReplayBuffer(capacity=10, dim=2)
    with pytest.raises(ValueError, match="shape \\[n, 2\\]"):
        buf.add(torch.zeros(3, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="keys of shape \\[3\\]"):
        buf.add(torch.zeros(3, 2), torch.zeros(4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_buffer_moves_to_cuda_and_samples_there():
    buf = RankBuffer(capacity=10, dim=2).to("cuda")
    buf.add(torch.randn(6, 2), torch.randn(6))
    x, key = buf.sample(8, generator=torch.Generator("cuda").manual_seed(0))
    assert x.device.type == key.device.type == "cuda"


def test_rank_order_kept_by_merging_equals_a_full_sort_through_wraparound_and_ties():
    # The rank buffer merges new entries into its cached best-first order instead of re-sorting on every add.
    g = torch.Generator().manual_seed(1)
    for trial in range(30):
        capacity = int(torch.randint(5, 60, (1,), generator=g))
        buf = RankBuffer(capacity, 2, k=0.3)
        for _ in range(12):
            n = int(torch.randint(1, 25, (1,), generator=g))
            buf.add(torch.randn(n, 2, generator=g), torch.randint(0, 4, (n,), generator=g).float())  # many ties
            if torch.rand(1, generator=g) < 0.6:
                assert torch.equal(buf._sorted_order(), buf.best_first()), trial

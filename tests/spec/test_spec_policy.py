"""Draft-length policies: the greedy allocation is optimal under its cost model; estimates track acceptance."""

from __future__ import annotations

import itertools
import random

import pytest

from infer.sampling_params import SamplingParams
from infer.sequence import Sequence
from infer.spec.policy import AdaptivePolicy, FixedPolicy, expected_tokens, make_policy


def _seqs(n: int, start: int = 0) -> list[Sequence]:
    return [Sequence(start + i, f"r{i}", None, [1, 2], SamplingParams(), 0.0) for i in range(n)]


def test_expected_tokens() -> None:
    assert expected_tokens(0.0, 5) == 1.0
    assert expected_tokens(1.0, 5) == 6.0
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)


def test_fixed_policy() -> None:
    pol = FixedPolicy(3)
    assert pol.num_slots(_seqs(4), 100) == [3, 3, 3, 3]
    pol.update(_seqs(1), [3], [1])
    with pytest.raises(ValueError, match="num_tokens"):
        FixedPolicy(-1)


def _rate(pol: AdaptivePolicy, ks: list[int], rates: list[float], batch: int) -> float:
    time = 1 + (max(batch, len(ks)) + sum(ks)) / pol.knee_tokens + pol.draft_cost * sum(ks)
    return sum(expected_tokens(a, k) for a, k in zip(rates, ks)) / time


@pytest.mark.parametrize("seed", range(6))
def test_greedy_choice_is_optimal_under_the_cost_model(seed: int) -> None:
    """With margin 0 the allocation maximises tokens per unit time (brute force over all k vectors)."""
    rng = random.Random(seed)
    pol = AdaptivePolicy(
        num_tokens=4,
        knee_tokens=rng.choice([4.0, 16.0, 64.0]),
        draft_cost=rng.choice([0.0, 0.05]),
        margin=0.0,
    )
    rates = [rng.random() for _ in range(3)]
    batch = rng.choice([3, 10, 40])
    got = pol.choose(rates, batch)
    best = max(_rate(pol, list(ks), rates, batch) for ks in itertools.product(range(5), repeat=3))
    assert _rate(pol, got, rates, batch) == pytest.approx(best, rel=1e-9)


def test_k_shrinks_with_batch_and_grows_with_acceptance() -> None:
    pol = AdaptivePolicy(num_tokens=8, knee_tokens=16.0)
    by_batch = [pol.choose([0.7] * b, b)[0] for b in (1, 4, 16, 64, 256)]
    assert by_batch == sorted(by_batch, reverse=True) and by_batch[0] >= 4 and by_batch[-1] == 0
    assert pol.choose([0.99], 1) == [8]
    # one decoding sequence inside a big prefill step: its drafts ride along almost for free
    assert pol.choose([0.7], 256)[0] >= by_batch[0]
    by_rate = [pol.choose([a] * 32, 32)[0] for a in (0.1, 0.5, 0.8, 0.95, 0.99)]
    assert by_rate == sorted(by_rate) and by_rate[0] == 0 and by_rate[-1] > 0
    # a sequence that never accepts gets nothing even alone; a mixed batch drafts for the good ones
    assert pol.choose([0.0], 1) == [0]
    ks = pol.choose([0.95, 0.05, 0.9], 3)
    assert ks[1] == 0 and ks[0] >= ks[2] > 0


def test_large_batch_costs_at_most_the_margin() -> None:
    """Whatever it chooses, the modelled rate never drops below spec=none's (k=0)."""
    pol = AdaptivePolicy(num_tokens=6, knee_tokens=16.0, margin=0.05)
    rng = random.Random(0)
    for _ in range(50):
        n = rng.choice([1, 8, 32, 128])
        rates = [rng.random() for _ in range(n)]
        ks = pol.choose(rates, n)
        assert _rate(pol, ks, rates, n) >= _rate(pol, [0] * n, rates, n)


def test_estimates_track_acceptance_and_switch_off() -> None:
    rng = random.Random(1)
    pol = AdaptivePolicy(num_tokens=6, knee_tokens=16.0, decay=0.95)
    good, bad = _seqs(2)
    given = [0, 0]  # slots over the last 100 steps
    for _ in range(300):
        drafted = pol.num_slots([good, bad], 2)
        accepted = []
        for d, a in zip(drafted, (0.8, 0.0)):
            n = 0
            while n < d and rng.random() < a:
                n += 1
            accepted.append(n)
        pol.update([good, bad], drafted, accepted)
        if _ >= 200:
            given[0] += drafted[0]
            given[1] += drafted[1]
    assert pol.rate(good.seq_id) == pytest.approx(0.8, abs=0.1)
    assert pol.rate(bad.seq_id) < 0.3
    # the hopeless sequence is only re-probed now and then (its estimate relaxes toward the prior)
    assert given[1] < 0.1 * given[0]
    assert pol.num_slots([good], 1)[0] >= 4


def test_switched_off_sequence_is_retried_later() -> None:
    pol = AdaptivePolicy(num_tokens=4, knee_tokens=16.0, decay=0.8)
    (s,) = _seqs(1)
    for _ in range(10):
        pol.update([s], [4], [0])
    assert pol.choose([pol.rate(s.seq_id)] * 64, 64) == [0] * 64
    assert pol.num_slots([s], 1) == [0]
    for _ in range(30):  # idle steps (nothing drafted) let the estimate relax toward the prior
        pol.update([s], [0], [0])
    assert pol.num_slots([s], 1)[0] > 0


def test_free_and_bad_input() -> None:
    pol = AdaptivePolicy(num_tokens=2)
    (s,) = _seqs(1)
    pol.update([s], [2], [1])
    assert s.seq_id in pol._seq
    pol.free(s)
    assert s.seq_id not in pol._seq
    with pytest.raises(ValueError, match="accepted"):
        pol.update([s], [1], [2])
    for name, bad in (
        ("knee_tokens", 0),
        ("decay", 1.0),
        ("prior", 1.5),
        ("margin", -1),
        ("prior_weight", 0),
    ):
        with pytest.raises(ValueError, match=name):
            AdaptivePolicy(2, **{name: bad})


def test_make_policy() -> None:
    assert isinstance(make_policy("fixed", 3, knee_tokens=4.0), FixedPolicy)
    ad = make_policy("adaptive", 3, knee_tokens=4.0)
    assert isinstance(ad, AdaptivePolicy) and ad.knee_tokens == 4.0
    with pytest.raises(ValueError, match="fixed, adaptive"):
        make_policy("greedy", 3)

"""Prompt-lookup proposer: against a brute-force reference, and its edge cases."""

from __future__ import annotations

import random

import pytest

from infer.sampling_params import SamplingParams
from infer.sequence import Sequence
from infer.spec.ngram import NgramProposer


def reference(tokens: list[int], k: int, n_min: int, n_max: int) -> list[int]:
    """Brute force: longest suffix n in [n_min, n_max] with an earlier occurrence (the latest
    one), then copy k tokens after it, reading the draft itself past the end."""
    length = len(tokens)
    for n in range(min(n_max, length - 1), n_min - 1, -1):
        suffix = tokens[length - n :]
        for s in range(length - n - 1, -1, -1):
            if tokens[s : s + n] == suffix:
                ext = list(tokens)
                for j in range(k):
                    ext.append(ext[s + n + j])
                return ext[length:]
    return []


@pytest.mark.parametrize(("n_min", "n_max", "vocab"), [(1, 3, 4), (2, 4, 3), (3, 3, 2), (2, 5, 6)])
def test_matches_brute_force_as_the_sequence_grows(n_min: int, n_max: int, vocab: int) -> None:
    rng = random.Random(n_min * 100 + n_max * 10 + vocab)
    prop = NgramProposer(num_tokens=5, n_min=n_min, n_max=n_max)
    for key in range(5):
        tokens = [rng.randrange(vocab) for _ in range(rng.randint(0, 6))]
        while len(tokens) < 120:
            k = rng.randint(0, 7)
            assert prop.propose_tokens(key, tokens, k) == reference(
                tokens, min(k, 5), n_min, n_max
            ), tokens
            # the sequence advances by 1..4 tokens (accepted drafts + bonus), sometimes following the draft
            draft = reference(tokens, 4, n_min, n_max)
            step = rng.randint(1, 4)
            tokens = tokens + (
                draft[:step]
                if draft and rng.random() < 0.5
                else [rng.randrange(vocab) for _ in range(step)]
            )
    assert len(prop._index) == 5


def test_prefers_the_longest_and_latest_match() -> None:
    prop = NgramProposer(num_tokens=3, n_min=1, n_max=3)
    #          0  1  2  3  4  5  6  7  8  9 10 11
    tokens = [1, 2, 3, 7, 9, 2, 3, 8, 5, 3, 4, 2, 3]
    # suffix (2, 3): latest earlier occurrence at 5 -> 8 5 3 (not the 1-gram (3,) at 9)
    assert prop.propose_tokens(0, tokens, 3) == [8, 5, 3]
    # with a 3-gram match available, it wins over the later 2-gram
    tokens2 = [1, 2, 3, 7, 9, 2, 3, 8, 5, 1, 2, 3]
    assert prop.propose_tokens(1, tokens2, 2) == [7, 9]


def test_repeating_pattern_is_extended_past_the_end() -> None:
    prop = NgramProposer(num_tokens=7, n_min=2, n_max=2)
    assert prop.propose_tokens(0, [5, 6, 7, 5, 6], 7) == [7, 5, 6, 7, 5, 6, 7]
    assert prop.propose_tokens(1, [4, 4, 4], 3) == [4, 4, 4]


def test_no_match_and_slot_limits() -> None:
    prop = NgramProposer(num_tokens=2, n_min=2, n_max=3)
    assert prop.propose_tokens(0, [1, 2, 3, 4, 5], 2) == []
    assert prop.propose_tokens(1, [1, 2, 9, 1, 2], 0) == []
    assert prop.propose_tokens(1, [1, 2, 9, 1, 2], 5) == [9, 1]  # capped by num_tokens
    assert NgramProposer(0).propose_tokens(0, [1, 1, 1, 1], 3) == []


def _seq(seq_id: int, prompt: list[int], out: list[int]) -> Sequence:
    return Sequence(
        seq_id, f"r{seq_id}", None, list(prompt), SamplingParams(), 0.0, output_token_ids=list(out)
    )


def test_protocol_over_sequences_and_free() -> None:
    prop = NgramProposer(num_tokens=4, n_min=1, n_max=4)
    a, b = _seq(0, [10, 11, 12, 13, 10, 11], []), _seq(1, [1, 2, 3], [1, 2])
    draft = prop.propose([a, b], [4, 1])
    assert (
        draft.tokens == [[12, 13, 10, 11], [3]]
        and draft.probs is None
        and draft.probs_of(0) is None
    )
    b.output_token_ids += [3, 1]
    prop.commit([a, b], [0, 1])
    assert prop.propose([b], [3]).tokens == [[2, 3, 1]]
    prop.free(a)
    prop.free(a)  # idempotent
    assert set(prop._index) == {1}
    # a recycled seq_id with different history is re-indexed, not confused with the old one
    c = _seq(1, [7, 8, 9, 7], [])
    assert prop.propose([c], [2]).tokens == [[8, 9]]


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"num_tokens": -1}, "num_tokens"),
        ({"num_tokens": 2, "n_min": 0}, "n_min"),
        ({"num_tokens": 2, "n_min": 4, "n_max": 3}, "n_max"),
    ],
)
def test_bad_config_names_the_field(kw: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        NgramProposer(**kw)

"""SamplingParams validation: every bad field is a ValueError naming the field and the
allowed values (no TypeError from deep inside, no NaN slipping through to the sampler)."""

from __future__ import annotations

import math

import pytest

from infer import SamplingParams

BAD = [
    ("temperature", -0.5), ("temperature", math.nan), ("temperature", math.inf),
    ("temperature", "0.7"), ("temperature", None),
    ("top_p", 0.0), ("top_p", 1.5), ("top_p", -1.0), ("top_p", math.nan),
    ("top_k", -2), ("top_k", 2.5),
    ("min_p", -0.1), ("min_p", 1.1),
    ("repetition_penalty", 0.0), ("repetition_penalty", -1.0),
    ("presence_penalty", 2.5), ("frequency_penalty", -3.0),
    ("max_tokens", 0), ("max_tokens", -1), ("max_tokens", 2.5), ("max_tokens", True),
    ("max_tokens", "8"),
    ("min_tokens", -1),
    ("n", 0),
    ("seed", "abc"), ("seed", 1.5),
    ("logprobs", -1), ("logprobs", 1.5), ("prompt_logprobs", -2),
    ("stop_token_ids", [-1]), ("stop_token_ids", ["a"]),
    ("stop", [""]), ("stop", 5), ("stop", [3]), ("stop_token_ids", 7),
]


@pytest.mark.parametrize(("field", "value"), BAD, ids=[f"{f}={v!r}" for f, v in BAD])
def test_bad_field_is_named(field: str, value: object) -> None:
    with pytest.raises(ValueError) as ei:
        SamplingParams(**{field: value})
    msg = str(ei.value)
    assert f"SamplingParams.{field}=" in msg and "allowed" in msg


def test_min_tokens_above_max_tokens() -> None:
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(max_tokens=4, min_tokens=5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {}, dict(temperature=0), dict(temperature=0.7, top_p=1, top_k=0), dict(top_k=50),
        dict(min_p=1.0, seed=0), dict(max_tokens=1, min_tokens=1), dict(logprobs=0),
        dict(stop="x", stop_token_ids=[0, 5]), dict(presence_penalty=-2, frequency_penalty=2),
    ],
)
def test_good_params_accepted(kwargs: dict) -> None:  # type: ignore[type-arg]
    sp = SamplingParams(**kwargs)
    sp.validate()
    assert isinstance(sp.stop, list)


def test_greedy_flag() -> None:
    assert SamplingParams(temperature=0).greedy and not SamplingParams(temperature=0.5).greedy

"""Calibration never reads a token that evaluation scores or prompts with, in any setting:
token positions of the perplexity windows and greedy prompts (``eval_inputs``) and of the
calibration sequences (``calibration_sequences``) are computed on the real default text
with the real tokenizer, for several eval and calibration settings, and must not meet."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from infer.config_loader import compose_config
from infer.eval.evaluate import cache_dir_of, eval_inputs
from infer.models.sources import resolve_model_path
from infer.quant.calibration import CalibConfig, calibration_sequences


class PositionTokenizer:
    """Encodes like the real tokenizer but returns token POSITIONS (0..n-1), so every
    slice taken from the text names exactly the positions it read."""

    def __init__(self, real) -> None:  # type: ignore[no-untyped-def]
        self.real = real

    @functools.lru_cache(maxsize=4)  # noqa: B019 (one instance per test module)
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        assert add_special_tokens is False  # both sides tokenize the text the same way
        return list(range(len(self.real.encode(text, add_special_tokens=False))))


@pytest.fixture(scope="module")
def tok() -> PositionTokenizer:
    from transformers import AutoTokenizer

    return PositionTokenizer(AutoTokenizer.from_pretrained(str(resolve_model_path("builtin:tiny-llama"))))


EVAL_SETTINGS = {
    "default": [],
    "default-all-windows": ["eval.max_windows=null"],
    "quick-all-windows": ["eval=quick", "eval.max_windows=null"],
    "small-windows-many-prompts": ["eval.window=64", "eval.max_windows=null",
                                   "eval.greedy_prompts=200", "eval.greedy_prompt_len=256"],
    "huge-max-windows": ["eval.max_windows=100000", "eval.greedy_prompts=1"],
}
CALIB_SETTINGS = {
    **{q: [f"quant={q}"] for q in ("awq", "w8a8", "fp8", "gptq")},
    "awq-long": ["quant=awq", "quant.method.calib.num_seqs=64", "quant.method.calib.seq_len=2048",
                 "quant.method.calib.seed=3"],
}


def positions(seqs: list[list[int]]) -> set[int]:
    return {p for s in seqs for p in s}


@pytest.mark.parametrize("calib", list(CALIB_SETTINGS))
@pytest.mark.parametrize("ev", list(EVAL_SETTINGS))
def test_eval_and_calibration_never_overlap(tok: PositionTokenizer, ev: str, calib: str) -> None:
    from infer.eval.data import load_text

    cfg = compose_config(EVAL_SETTINGS[ev] + CALIB_SETTINGS[calib])
    cache: Path = cache_dir_of(cfg)
    e = cfg.eval
    ids = tok.encode(load_text(str(e.data), cache, str(e.split), str(e.field)), add_special_tokens=False)
    wins, prompts = eval_inputs(ids, e)
    c = CalibConfig.from_any(cfg.quant.method.calib)
    assert c.data == e.data  # the same text on both sides: the case where they could meet
    cal = calibration_sequences(c, tok, cache)
    scored, prompted, calibrated = positions(wins), positions(prompts), positions(cal)
    assert scored and calibrated and (prompted or int(e.greedy_prompts) == 0)
    assert not (scored & calibrated)
    assert not (prompted & calibrated)

"""Fixtures for the server tests."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="module")
def tiny_llm() -> Any:
    """LLM over the tiny random Llama (SmolLM2's tokenizer and chat template), one thread."""
    from infer import LLM

    return LLM(model="tiny", threads=1, max_num_seqs=64)

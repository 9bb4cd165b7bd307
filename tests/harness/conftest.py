"""Fixtures for the eval/bench/sweep harness tests: one tiny engine per session."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("INFER_PROGRESS", "0")  # no tqdm bars in test logs
os.environ.setdefault("WANDB_MODE", "offline")

TINY_VALUES = {"engine.kv_cache_tokens": 4096, "threads": 1}


@pytest.fixture(scope="session")
def tiny_cfg() -> Any:
    """Composed config of the tiny random-weights model (default attention)."""
    from infer import compose_config

    return compose_config(["model=tiny"], TINY_VALUES)


@pytest.fixture(scope="session")
def tiny_engine(tiny_cfg: Any) -> Iterator[Any]:
    from infer import build

    engine = build(tiny_cfg)
    yield engine
    del engine
    gc.collect()

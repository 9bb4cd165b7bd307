"""Paths that drive the runner from rank 0 alone refuse a multi-process engine by name."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from infer.eval.scoring import score_tokens
from infer.eval.spec_variants import use_variant
from infer.parallel.state import ParallelState


def test_scoring_and_variants_refuse_several_ranks() -> None:
    eng = SimpleNamespace(parallel=ParallelState(tp_size=2), has_unfinished=lambda: False)
    with pytest.raises(ValueError, match=r"scoring .* parallel.tp_size=2 x parallel.pp_size=1"):
        score_tokens(eng, [1, 2, 3])
    with pytest.raises(ValueError, match="use_variant .* parallel=single"):
        use_variant(eng, None, None)

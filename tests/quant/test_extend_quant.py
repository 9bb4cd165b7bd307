"""Extending without forking: a quant method defined in the test folder, named by _target_ in
a YAML in the user's own config dir, runs through LLM(...) without editing infer."""

from __future__ import annotations

from pathlib import Path

import torch

from infer import LLM

TOY_YAML = """\
# A user's own quant method (not part of infer).
name: toy                     # label used in logs and results tables
method:
  _target_: toy_quant.Fp16Weights  # the user's class
"""


def test_own_quant_method_via_searchpath(tmp_path: Path, oracle) -> None:  # type: ignore[no-untyped-def]
    import toy_quant

    (tmp_path / "quant").mkdir()
    (tmp_path / "quant" / "toy.yaml").write_text(TOY_YAML)
    search = f"hydra.searchpath=[file://{tmp_path}]"
    toy = LLM(model="tiny", quant="toy", overrides=[search], kv_cache_tokens=4096)
    assert toy.engine.runner.model.layers[0].mlp.down_proj.weight.dtype == torch.float16
    ids = list(range(50, 80))
    got = oracle.engine_logits(toy, ids)
    assert toy_quant.Fp16Weights.applied > 0
    ref = oracle.engine_logits(LLM(model="tiny", kv_cache_tokens=4096), ids)
    torch.testing.assert_close(got, ref, atol=5e-3, rtol=5e-3)

"""workload=grounded: builds offline through the config, deterministic, prompts contain what the answer restates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from infer.eval import workloads as W
from infer.eval.build_workload import build_workload

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def test_grounded_builds_from_its_config(tokenizer: Any, tmp_path: Path) -> None:
    cfg = OmegaConf.load(REPO / "configs" / "workload" / "grounded.yaml")
    cfg.generator.num_requests = 12
    reqs = build_workload(cfg, tokenizer, tmp_path)
    assert len(reqs) == 12
    for r in reqs:
        text = tokenizer.decode(r.prompt_token_ids)
        assert r.prompt in text and "<|im_start|>assistant" in text  # chat-formatted user turn
        assert not r.ignore_eos and r.max_tokens > 0
    kinds = {r.prompt.split(" ")[0] for r in reqs}
    assert len(kinds) >= 2  # several task kinds drawn


def test_grounded_is_deterministic_and_grounded(tokenizer: Any) -> None:
    a = W.grounded(tokenizer, 16, source_len=[40, 80], seed=1)
    assert a == W.grounded(tokenizer, 16, source_len=[40, 80], seed=1)
    assert a != W.grounded(tokenizer, 16, source_len=[40, 80], seed=2)
    for r in a:
        body = r.prompt.split("\n\n", 1)[1]
        excerpt = body.split("\n", 1)[1].rsplit("\n", 1)[0]  # inside the fence / quotes
        n = len(tokenizer.encode(excerpt, add_special_tokens=False))
        assert 40 <= n <= 80 + 120  # whole lines/paragraphs: may overshoot by one unit
        assert r.max_tokens == max(1, round(1.2 * n))
    code = [r for r in a if "```python" in r.prompt]
    assert 0 < len(code) < len(a)
    renames = [r for r in a if r.prompt.startswith("Rename `")]
    for r in renames:  # the renamed identifier really occurs in the excerpt
        ident = r.prompt.split("`")[1]
        assert r.prompt.count(ident) >= 3


def test_grounded_bad_input(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="tasks"):
        W.grounded(tokenizer, 2, tasks=["summarise"])
    with pytest.raises(ValueError, match="code_fraction"):
        W.grounded(tokenizer, 2, code_fraction=2.0)

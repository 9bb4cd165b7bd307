"""Text loading (builtin, file, dataset folder) and the benchmark workload generators."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from infer.eval import workloads as W
from infer.eval.data import load_rows, pydoc_text, windows


def test_pydoc_text_is_prose() -> None:
    t = pydoc_text()
    assert len(t) > 300_000 and "The \"assert\" statement" in t and "topics = {" not in t


def test_text_file_and_dataset_folder(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("line one\nline two\n")
    assert load_rows(str(f), tmp_path) == ["line one\nline two\n"]
    import datasets

    datasets.Dataset.from_dict({"text": ["x y", "z"]}).save_to_disk(str(tmp_path / "ds"))
    assert load_rows(str(tmp_path / "ds"), tmp_path) == ["x y", "z"]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"]}),
                               "test": datasets.Dataset.from_dict({"text": ["b"]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert load_rows(str(tmp_path / "dd"), tmp_path, split="test") == ["b"]
    with pytest.raises(ValueError, match="no column"):
        load_rows(str(tmp_path / "ds"), tmp_path, field="body")
    with pytest.raises(FileNotFoundError):
        load_rows("./missing.txt", tmp_path)


def test_windows() -> None:
    ids = list(range(10))
    assert windows(ids, 4, None) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert windows(ids, 4, 1) == [[0, 1, 2, 3]]
    with pytest.raises(ValueError):
        windows(ids, 11, None)


CORPUS = list(range(1000, 3000))


def test_synthetic_lengths_and_seed() -> None:
    a = W.synthetic(CORPUS, 20, [5, 9], [2, 3], seed=3)
    assert len(a) == 20 and all(5 <= len(r.prompt_token_ids) <= 9 and 2 <= r.max_tokens <= 3 for r in a)
    assert a == W.synthetic(CORPUS, 20, [5, 9], [2, 3], seed=3)
    assert a != W.synthetic(CORPUS, 20, [5, 9], [2, 3], seed=4)
    assert all(r.ignore_eos and r.depends_on is None for r in a)


def test_shared_prefix_and_few_shot(tiny_engine: Any) -> None:
    reqs = W.shared_prefix(CORPUS, 4, 50, [3, 6], [2, 2])
    assert all(r.prompt_token_ids[:50] == reqs[0].prompt_token_ids[:50] for r in reqs)
    assert len({tuple(r.prompt_token_ids) for r in reqs}) == 4
    fs = W.few_shot(tiny_engine.tokenizer, CORPUS, 3, 2, 20, [3, 5], [2, 2])
    k = min(len(r.prompt_token_ids) for r in fs) - 5
    assert all(r.prompt_token_ids[:k] == fs[0].prompt_token_ids[:k] for r in fs)


def test_multi_turn_resends_history(tiny_engine: Any) -> None:
    reqs = W.multi_turn(tiny_engine.tokenizer, CORPUS, 2, 3, [4, 6], [3, 3])
    assert len(reqs) == 6
    for conv in (reqs[:3], reqs[3:]):
        assert conv[0].depends_on is None
        for prev, cur in itertools.pairwise(conv):
            assert cur.depends_on == reqs.index(prev)
            # the previous turn's prompt (minus the generation prompt) is a prefix of this one
            assert len(cur.prompt_token_ids) > len(prev.prompt_token_ids)
            assert cur.prompt_token_ids[:10] == prev.prompt_token_ids[:10]


def test_sharegpt(tiny_engine: Any, tmp_path: Path) -> None:
    data = [
        {"conversations": [{"from": "human", "value": "What is the capital of France?"},
                           {"from": "gpt", "value": "Paris is the capital of France."}]},
        {"conversations": [{"from": "human", "value": "hi"}]},  # no reply: skipped
        {"conversations": [{"from": "human", "value": "Name three colours please."},
                           {"from": "gpt", "value": "Red, green and blue are three colours."}]},
    ]
    p = tmp_path / "sg.json"
    p.write_text(json.dumps(data))
    reqs = W.sharegpt(tiny_engine.tokenizer, str(p), num_requests=10)
    assert len(reqs) == 2 and all(r.max_tokens >= 4 for r in reqs)
    assert {r.prompt for r in reqs} == {data[0]["conversations"][0]["value"], data[2]["conversations"][0]["value"]}

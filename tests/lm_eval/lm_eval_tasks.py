"""Three small offline lm-eval tasks written into a folder: multiple choice, generate_until and
rolling loglikelihood (task YAML + local jsonl each)."""

from __future__ import annotations

import json
from pathlib import Path

TASKS = ("infer_test_mc", "infer_test_gen", "infer_test_rolling")

_MC = [
    {"q": "The capital of France is", "choices": ["Paris", "Rome", "Berlin"], "label": 0},
    {"q": "Two plus two equals", "choices": ["three", "four", "five", "twenty-two"], "label": 1},
    {"q": "The sun rises in the", "choices": ["west", "north", "east"], "label": 2},
    {"q": "Water freezes at zero degrees", "choices": ["Celsius", "Kelvin"], "label": 0},
    {"q": "A week has seven", "choices": ["days", "hours", "months"], "label": 0},
    {"q": "Python is a programming", "choices": ["snake", "language", "editor"], "label": 1},
]
_GEN = [
    {"question": "Q: What color is the sky?\nA:", "answer": "blue"},
    {"question": "Q: How many legs does a cat have?\nA:", "answer": "four"},
    {"question": "Q: What is the opposite of hot?\nA:", "answer": "cold"},
    {"question": "Def: def add(a, b):\n    return", "answer": "a + b"},
]
_SENT = ("The quick brown fox jumps over the lazy dog while the river keeps running to the sea. "
         "Numbers like 3.14159 and 2,718 appear beside words, symbols {[()]} and   spaces. ")
_ROLLING = [
    {"text": "A short document about nothing in particular."},
    {"text": _SENT * 12},  # several windows at max_length=128
    {"text": "def f(x):\n    return x * 2\n\nprint(f(21))\n"},
]

_MC_YAML = """task: infer_test_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{q}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
"""
_GEN_YAML = """task: infer_test_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: " {{{{answer}}}}"
generation_kwargs:
  until: ["\\n", "."]
  max_gen_toks: 10
  do_sample: false
metric_list:
  - metric: exact_match
"""
_ROLLING_YAML = """task: infer_test_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""


def write_tasks(folder: Path) -> Path:
    """Write the three tasks (YAML + jsonl) into ``folder``; returns it (an include_path)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, docs, yml in (("mc", _MC, _MC_YAML), ("gen", _GEN, _GEN_YAML), ("rolling", _ROLLING, _ROLLING_YAML)):
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs))
        (folder / f"infer_test_{name}.yaml").write_text(yml.format(data=data))
    return folder

"""``--model infer`` gives lm-eval's own ``--model hf`` metrics on the same fp32 checkpoint:
per-request loglikelihoods within 1e-4, identical is_greedy flags and generations, equal
task metrics, with attention=paged and radix; a quantized engine runs the same tasks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from lm_eval_tasks import TASKS, write_tasks  # type: ignore[import-not-found]

MAX_LENGTH = 128  # both backends: same rolling windows and truncation


def _evaluate(model: str, model_args: str, include: Path) -> dict[str, Any]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from infer.lm_eval_backend import register

    register()
    return simple_evaluate(model=model, model_args=model_args, tasks=list(TASKS), batch_size=1,
                           task_manager=TaskManager(include_path=str(include)), log_samples=True,
                           random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)


def _resps(res: dict[str, Any], task: str) -> list[Any]:
    return [s["filtered_resps"] for s in sorted(res["samples"][task], key=lambda s: s["doc_id"])]


@pytest.fixture(scope="module")
def setup(tiny_checkpoint: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    ckpt = tiny_checkpoint("llama")
    include = write_tasks(tmp_path_factory.mktemp("lm_eval_tasks"))
    hf = _evaluate("hf", f"pretrained={ckpt},dtype=float32,device=cpu,max_length={MAX_LENGTH}", include)
    return ckpt, include, hf


@pytest.mark.parametrize("attention", ["paged", "radix"])
def test_infer_matches_hf(setup: Any, attention: str) -> None:
    ckpt, include, hf = setup
    ours = _evaluate("infer", f"pretrained={ckpt},attention={attention},threads=1,max_length={MAX_LENGTH}",
                     include)
    mc_h, mc_o = _resps(hf, "infer_test_mc"), _resps(ours, "infer_test_mc")
    assert len(mc_o) == 6 and sum(len(d) for d in mc_o) == 18
    for doc_h, doc_o in zip(mc_h, mc_o, strict=True):
        for (ll_h, g_h), (ll_o, g_o) in zip(doc_h, doc_o, strict=True):
            assert abs(float(ll_h) - float(ll_o)) < 1e-4 and g_h == g_o
    roll_h, roll_o = _resps(hf, "infer_test_rolling"), _resps(ours, "infer_test_rolling")
    assert len(roll_o) == 3
    for a, b in zip(roll_h, roll_o, strict=True):  # each a one-element list
        assert abs(float(a[0]) - float(b[0])) < 1e-4, (a, b)
    assert _resps(ours, "infer_test_gen") == _resps(hf, "infer_test_gen")
    for task in TASKS:
        for metric, v_h in hf["results"][task].items():
            if not isinstance(v_h, (int, float)) or "stderr" in metric:
                continue
            v_o = ours["results"][task][metric]
            assert v_o == pytest.approx(v_h, rel=1e-5), (task, metric)


def test_quantized_engine_runs(setup: Any) -> None:
    ckpt, include, hf = setup
    ours = _evaluate("infer", f"pretrained={ckpt},quant=int8,threads=1,max_length={MAX_LENGTH}", include)
    assert 0.0 <= ours["results"]["infer_test_mc"]["acc,none"] <= 1.0
    assert math.isfinite(ours["results"]["infer_test_rolling"]["word_perplexity,none"])
    # quantization perturbs, it does not replace, the model: scores stay near the fp32 ones
    for doc_h, doc_o in zip(_resps(hf, "infer_test_mc"), _resps(ours, "infer_test_mc"), strict=True):
        for (ll_h, _), (ll_o, _) in zip(doc_h, doc_o, strict=True):
            assert ll_o != ll_h and abs(ll_o - ll_h) < 0.1 * abs(ll_h)

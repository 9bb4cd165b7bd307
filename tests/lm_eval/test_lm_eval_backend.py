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


def test_run_py_task_lm_eval(setup: Any, tmp_path: Path) -> None:
    """``python run.py task=lm_eval`` on local tasks: flat ``<task>/<metric>`` columns equal to
    the same evaluation run in-process; samples written beside metrics.json."""
    import json
    import subprocess
    import sys

    _, include, _ = setup
    repo = Path(__file__).resolve().parents[2]
    r = subprocess.run(
        [sys.executable, "run.py", "model=tiny", "task=lm_eval", "threads=1",
         "lm_eval.tasks=[infer_test_mc,infer_test_rolling]", f"lm_eval.include_path={include}",
         f"lm_eval.max_length={MAX_LENGTH}", "lm_eval.log_samples=true", f"hydra.run.dir={tmp_path}"],
        cwd=repo, capture_output=True, text=True, timeout=600, check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    ref = _evaluate("infer", f"model=tiny,threads=1,max_length={MAX_LENGTH}", include)["results"]
    assert metrics["infer_test_mc/acc"] == ref["infer_test_mc"]["acc,none"]
    assert metrics["infer_test_mc/acc_norm"] == ref["infer_test_mc"]["acc_norm,none"]
    assert metrics["infer_test_rolling/word_perplexity"] == pytest.approx(
        ref["infer_test_rolling"]["word_perplexity,none"], rel=1e-9)
    lines = (tmp_path / "lm_eval_samples.jsonl").read_text().splitlines()
    assert len(lines) == 6 + 3

"""Speculation columns reach every sink: run_requests' metrics, the bench table, W&B's summary
and per-step series, and the sweep's results table (one row per proposer)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from infer.eval import workloads as W
from infer.eval.bench import run_requests
from infer.eval.spec_metrics import SPEC_COLUMNS, format_spec_table, snapshot, spec_delta

REPO = Path(__file__).resolve().parents[2]
# a repetitive corpus: prompt lookup finds matches, the tiny random model often repeats too
CORPUS = [1000 + (i % 23) for i in range(2000)]


@pytest.fixture(scope="module")
def ngram_engine() -> Any:
    from infer import build, compose_config

    cfg = compose_config(
        ["model=tiny", "spec=ngram", "spec.policy.kind=fixed"],
        {"engine.kv_cache_tokens": 4096, "threads": 1},
    )
    return build(cfg)


def test_spec_delta_arithmetic() -> None:
    before = {
        "spec_drafted": 10.0,
        "spec_accepted": 4.0,
        "spec_steps": 3.0,
        "draft_time": 1.0,
        "verify_time": 2.0,
    }
    after = {
        "spec_drafted": 30.0,
        "spec_accepted": 19.0,
        "spec_steps": 8.0,
        "draft_time": 1.5,
        "verify_time": 4.0,
    }
    d = spec_delta(before, after)
    assert d["spec_drafted"] == 20 and d["spec_accepted"] == 15 and d["spec_steps"] == 5
    assert d["acceptance_rate"] == 0.75 and d["acceptance_length"] == 4.0
    assert d["draft_time_s"] == 0.5 and d["verify_time_s"] == 2.0 and d["draft_time_frac"] == 0.2
    empty = spec_delta(after, after)
    assert empty["acceptance_rate"] == 0.0 and empty["acceptance_length"] == 1.0


def test_run_requests_reports_this_runs_speculation(ngram_engine: Any) -> None:
    eng = ngram_engine
    reqs = W.synthetic(CORPUS, 4, [24, 40], [16, 24], seed=3)
    run_requests(eng, reqs[:1])  # earlier work must not leak into the next run's counters
    s0 = snapshot(eng.stats)
    m = run_requests(eng, reqs)
    s1 = snapshot(eng.stats)
    for k in SPEC_COLUMNS:
        assert k in m, k
    assert m["spec_drafted"] == s1["spec_drafted"] - s0["spec_drafted"] > 0
    assert m["spec_accepted"] == s1["spec_accepted"] - s0["spec_accepted"]
    assert m["acceptance_length"] == 1 + m["spec_accepted"] / m["spec_steps"]
    assert 0 <= m["acceptance_rate"] <= 1 and m["verify_time_s"] > 0 and m["draft_time_s"] >= 0
    # per-request counters add up to the run's; per-step series carry drafted/accepted
    outs = m["_outputs"]
    assert sum(o.metrics["spec_drafted"] for o in outs) == m["spec_drafted"]
    assert sum(o.metrics["spec_accepted"] for o in outs) == m["spec_accepted"]
    assert sum(s["drafted"] for s in m["_steps"]) == m["spec_drafted"]
    assert sum(s["accepted"] for s in m["_steps"]) == m["spec_accepted"]
    table = format_spec_table([{"spec": "ngram", **m}])
    assert "accept length" in table.splitlines()[0] and table.splitlines()[2].startswith(
        "| ngram |"
    )


def test_plain_decoding_has_no_drafts(tiny_engine: Any) -> None:
    m = run_requests(tiny_engine, W.synthetic(CORPUS, 2, [8, 12], [4, 6], seed=1))
    assert m["spec_drafted"] == 0 and m["acceptance_length"] == 1.0 and m["acceptance_rate"] == 0.0


def test_wandb_summary_and_steps_carry_spec_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The W&B sink with a stand-in ``wandb`` module: summary and per-step logs."""
    logged: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    run = types.SimpleNamespace(
        log=lambda d, step=None: logged.append(d),
        finish=lambda: None,
        summary=types.SimpleNamespace(update=summary.update),
    )
    fake = types.SimpleNamespace(
        init=lambda **kw: run, Table=lambda columns, data: (columns, data), Image=lambda p: p
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    from infer.logging.wandb import WandbLogger

    m = {
        "output_tok_s": 5.0,
        **spec_delta(
            snapshot(None),
            {
                "spec_drafted": 8.0,
                "spec_accepted": 6.0,
                "spec_steps": 2.0,
                "draft_time": 0.1,
                "verify_time": 0.3,
            },
        ),
        "_steps": [{"batch_size": 1.0, "drafted": 8.0, "accepted": 6.0}],
    }
    WandbLogger(mode="disabled").log_summary(m, tmp_path / "run")
    assert summary["acceptance_length"] == 4.0 and summary["spec_drafted"] == 8.0
    assert any(d.get("engine/accepted") == 6.0 for d in logged)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["acceptance_rate"] == 0.75


def test_sweep_gives_one_row_per_proposer(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "run.py",
        "-m",
        "task=bench",
        "spec=none,ngram",
        "model=tiny",
        "threads=1",
        "engine.kv_cache_tokens=4096",
        "bench.warmup=0",
        "workload=synthetic",
        "workload.generator.num_requests=3",
        "workload.generator.prompt_len=[16,24]",
        "workload.generator.output_len=[8,12]",
        f"hydra.sweep.dir={sweep}",
    ]
    env = {**os.environ, "INFER_PROGRESS": "0", "HYDRA_FULL_ERROR": "1"}
    r = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    with open(sweep / "results.csv", newline="") as f:
        rows = {row["spec"]: row for row in csv.DictReader(f)}
    assert sorted(rows) == ["ngram", "none"]
    for row in rows.values():
        for k in SPEC_COLUMNS:
            assert row[k] != "", (row["spec"], k)
    assert (
        float(rows["none"]["spec_drafted"]) == 0 and float(rows["none"]["acceptance_length"]) == 1
    )
    assert "| ngram |" in r.stdout and "accept length" in r.stdout
    for i in range(2):
        saved = json.loads((sweep / str(i) / "metrics.json").read_text())
        assert "acceptance_length" in saved and "verify_time_s" in saved


def test_variants_swap_over_one_engine(tiny_engine: Any) -> None:
    """bench_spec.py's proposer swap: same target, drafts counted, outputs unchanged."""
    from infer.eval.spec_variants import build_variant, use_variant
    from infer.sampling_params import SamplingParams

    eng = tiny_engine
    old = (eng.proposer, eng.policy)
    reqs = W.synthetic(CORPUS, 3, [24, 32], [12, 16], seed=5)
    base = [list(o.outputs[0].token_ids) for o in run_requests(eng, reqs)["_outputs"]]
    try:
        for option, ov in (("ngram", []), ("self", ["spec.mode=layers", "spec.skip_layers=[1]"])):
            use_variant(eng, *build_variant(eng, option, [*ov, "spec.policy.kind=fixed"]))
            m = run_requests(eng, reqs)
            assert m["spec_drafted"] > 0, option
            assert [list(o.outputs[0].token_ids) for o in m["_outputs"]] == base, option
        with pytest.raises(ValueError, match="only spec"):
            build_variant(eng, "ngram", ["engine.max_num_seqs=2"])
        eng.add_request(None, reqs[0].prompt_token_ids, SamplingParams(max_tokens=2))
        with pytest.raises(RuntimeError, match="idle"):
            use_variant(eng, *old)
        while eng.has_unfinished():
            eng.step()
    finally:
        use_variant(eng, *old)

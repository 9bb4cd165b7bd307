"""One offline command runs a >= 3 point sweep: results table, Pareto PNG, one W&B run per point."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

TINY_SIZES = [
    "model=tiny", "threads=1", "engine.kv_cache_tokens=4096",
    "eval.window=32", "eval.max_windows=2", "eval.greedy_prompts=2", "eval.greedy_prompt_len=8",
    "eval.greedy_max_tokens=4", "bench.warmup=0",
    "workload.generator.num_requests=3", "workload.generator.prompt_len=[8,16]",
    "workload.generator.output_len=[2,4]",
]


def test_pareto_sweep_offline(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "run.py", "-m", "experiment=pareto", "logger=wandb",
           "model.dtype=float32,bfloat16,float16", *TINY_SIZES, f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "WANDB_MODE": "offline", "INFER_PROGRESS": "0", "HYDRA_FULL_ERROR": "1"}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    with open(sweep / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["model.dtype"] for r in rows) == ["bfloat16", "float16", "float32"]
    for row in rows:
        for k in ("output_tok_s", "ttft_ms_p50", "tpot_ms_p50", "peak_mem_mb", "ppl", "kl_mean",
                  "kl_p99", "top1_agree", "delta_ppl", "greedy_match"):
            assert math.isfinite(float(row[k])), (k, row[k])
        assert float(row["output_tok_s"]) > 0

    png = sweep / "pareto.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for i in range(3):
        point = sweep / str(i)
        assert (point / "metrics.json").exists() and (point / ".hydra" / "config.yaml").exists()
        runs = list((point / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, f"point {i}: {runs}"
        assert list(runs[0].glob("*.wandb"))
    # the sweep summary run (table + plot) beside the points
    assert list((sweep / "wandb").glob("offline-run-*"))
    assert "pareto:" in r.stdout

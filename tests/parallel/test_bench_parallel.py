"""scripts/bench_parallel.py --quick end to end on a tiny checkpoint: the JSON has a row per
layout with the greedy-equality flags and the communication counters (no timings checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_parallel_quick(tiny_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    folder = tiny_checkpoint("llama")
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO / "kernels"),
                                           os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run(
        [sys.executable, "scripts/bench_parallel.py", "--quick", "--models", str(folder),
         "--configs", "tp2", "pp2", "--num-requests", "3", "--max-tokens", "4",
         "--out-dir", str(tmp_path)],
        check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((tmp_path / "bench_parallel.json").read_text())
    assert set(res["comm_us"]) == {"shm", "gloo"} and all(v > 0 for v in res["comm_us"].values())
    assert set(res["bandwidth_gb_s"]) == {"1x1", "1x2", "2x1"}
    rows = {r["config"]: r for r in res["rows"]}
    assert list(rows) == ["1x1", "tp2", "pp2"]
    assert rows["1x1"]["equal_to_1x1"] is None
    for name in ("tp2", "pp2"):  # the parallel layouts reproduce the one-process greedy tokens
        assert rows[name]["equal_to_1x1"] is True and rows[name]["equal_requests"] == 3
        assert rows[name]["comm_ms_per_step"] > 0 and rows[name]["processes"] == 2
    for row in rows.values():
        assert row["output_tokens"] == 3 * 4 and row["preemptions"] == 0
        assert 0 < row["mem_bound_decode_tok_s"] and 0 < row["frac_w"] <= row["frac_wkv"]
    cfg = json.loads((folder / "config.json").read_text())
    # tensor parallel: one all-reduce of a hidden row per fed token for the vocab-parallel
    # embedding, then two per layer (attention output, MLP output), fp32
    assert rows["tp2"]["allreduce_bytes_per_token"] == \
        (1 + 2 * cfg["num_hidden_layers"]) * cfg["hidden_size"] * 4
    assert rows["pp2"]["allreduce_bytes_per_token"] == 0  # stages only send hidden states
    assert rows["1x1"]["comm_ms_per_step"] == 0
    # each tp rank streams about half the one-process weights
    w1, wt = rows["1x1"]["streamed_mb_per_rank"], rows["tp2"]["streamed_mb_per_rank"]
    assert len(wt) == 2 and abs(sum(wt) - w1[0]) < 0.05 * w1[0]
    md = (tmp_path / "bench_parallel.md").read_text()
    assert "| tp2 |" in md and "| pp2 |" in md and "shm" in md

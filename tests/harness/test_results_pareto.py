"""Results table appends (changing columns), the Pareto front, the plot and its CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from infer.eval.pareto import pareto_front, plot_pareto, point_labels
from infer.logging.console import ConsoleLogger
from infer.logging.results import append_row, read_rows

REPO = Path(__file__).resolve().parents[2]


def test_append_row_union_of_columns(tmp_path: Path) -> None:
    t = tmp_path / "r.csv"
    append_row(t, {"overrides": "a=1", "x": 1.5})
    append_row(t, {"overrides": "a=2", "y": 2})
    rows = read_rows(t)
    assert [r["overrides"] for r in rows] == ["a=1", "a=2"]
    assert rows[0]["y"] == "" and rows[1]["x"] == "" and rows[1]["y"] == "2"


def test_pareto_front() -> None:
    xs = [10.0, 20.0, 30.0, 25.0, 5.0]
    ys = [0.0, 0.1, 0.5, 0.6, 0.0]  # throughput up, KL down
    assert pareto_front(xs, ys) == [0, 1, 2]  # 3 is dominated by 2, 4 by 0
    assert pareto_front([1.0, 1.0], [1.0, 1.0]) == [0, 1]  # ties dominate nothing


def test_console_sink_writes_series_and_row(tmp_path: Path) -> None:
    sink = ConsoleLogger(results=str(tmp_path / "t.csv"))
    sink.log_summary({"output_tok_s": 3.0, "_steps": [{"batch_size": 1}], "_windows": []}, tmp_path / "run")
    assert (tmp_path / "run" / "steps.jsonl").read_text().strip() == '{"batch_size": 1}'
    assert "_steps" not in (tmp_path / "run" / "metrics.json").read_text()
    assert read_rows(tmp_path / "t.csv")[0]["output_tok_s"] == "3.0"


def test_plot_and_cli(tmp_path: Path) -> None:
    t = tmp_path / "results.csv"
    for i, (x, y) in enumerate([(10, 0.0), (20, 0.1), (15, 0.3)]):
        append_row(t, {"point": i, "overrides": f"experiment=pareto q={i}", "output_tok_s": x, "kl_mean": y})
    assert point_labels(read_rows(t)) == ["0", "1", "2"]
    png, front = plot_pareto(t, tmp_path / "p.png")
    assert png.read_bytes()[:4] == b"\x89PNG" and [r["point"] for r in front] == ["0", "1"]
    r = subprocess.run([sys.executable, "scripts/pareto.py", str(t), "--y", "kl_mean"], cwd=REPO,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "pareto.png").exists() and "2 point(s)" in r.stdout

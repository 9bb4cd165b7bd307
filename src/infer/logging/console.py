"""Console sink: prints a metrics line, writes metrics.json (+ one .jsonl per series) into
the run dir and, when ``results`` is set, appends a row to the results table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from infer.logging.results import append_row, make_row, results_path, scalars
from infer.logging.run_info import run_info


class ConsoleLogger:
    """The default sink (``logger=console``).

    Args:
        results: results table: None (none), ``auto`` (<sweep dir>/results.csv in a sweep,
            <run dir>/results.csv otherwise) or a CSV path.
    """

    def __init__(self, results: str | None = None) -> None:
        self.results = results

    def log_summary(self, metrics: dict[str, Any], run_dir: Path) -> None:
        """Print the scalar ``metrics`` on one line; save them to ``run_dir/metrics.json``;
        each ``_name`` list payload (per-step / per-window series) goes to ``name.jsonl``."""
        flat = scalars(metrics)
        print("metrics: " + " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in flat.items()
        ))
        run_dir.mkdir(parents=True, exist_ok=True)
        plain = {k: v for k, v in metrics.items() if not k.startswith("_")}
        (run_dir / "metrics.json").write_text(json.dumps(plain, indent=2, default=str))
        for k, v in metrics.items():
            if k.startswith("_") and isinstance(v, list):
                with open(run_dir / f"{k[1:]}.jsonl", "w") as f:
                    f.writelines(json.dumps(x, default=str) + "\n" for x in v)
        info = run_info(run_dir)
        table = results_path(self.results, info)
        if table is not None:
            append_row(table, make_row(metrics, info))

    def log_sweep(self, table: Path, plot: Path | None, sweep_dir: Path) -> None:
        """Called once at the end of a sweep (Pareto callback)."""
        print(f"results table: {table}" + (f"\npareto plot: {plot}" if plot else ""))

    def finish(self) -> None:
        return None

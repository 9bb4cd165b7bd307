"""W&B sink (``logger=wandb``): one run per run dir / sweep point with the composed config,
per-step engine metrics, per-window eval metrics, the summary and the results row; at the end
of a sweep a summary run with the whole results table and the Pareto plot.

Offline by default (files under <run dir>/wandb, upload later with ``wandb sync``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from infer.logging.console import ConsoleLogger
from infer.logging.results import make_row, read_rows, scalars
from infer.logging.run_info import composed_config, run_info


class WandbLogger:
    """Args: project/entity/group/tags/job_type as in ``wandb.init``; mode: offline | online |
    disabled; results: as ConsoleLogger (the console output and metrics.json are kept)."""

    def __init__(
        self, project: str = "infer", entity: str | None = None, mode: str = "offline",
        group: str | None = None, tags: list[str] | None = None, job_type: str = "run",
        results: str | None = None,
    ) -> None:
        self.project, self.entity, self.mode = project, entity, mode
        self.group, self.tags, self.job_type = group, list(tags or []), job_type
        self.console = ConsoleLogger(results)

    def _init(self, run_dir: Path, name: str, group: str | None, job_type: str, config: dict[str, Any]) -> Any:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        return wandb.init(
            project=self.project, entity=self.entity, mode=self.mode, dir=str(run_dir),
            name=name, group=group, job_type=job_type, tags=self.tags, config=config,
        )

    def log_summary(self, metrics: dict[str, Any], run_dir: Path) -> None:
        """Console output + metrics.json (+ results row), then one W&B run for this point."""
        import wandb

        self.console.log_summary(metrics, run_dir)
        info = run_info(run_dir)
        config = composed_config(run_dir)
        config["choices"] = info.choices
        config["overrides"] = info.overrides
        group = self.group or (info.sweep_dir.name if info.sweep_dir else None)
        run = self._init(run_dir, info.label, group, self.job_type, config)
        try:
            for i, s in enumerate(metrics.get("_steps", [])):
                run.log({f"engine/{k}": v for k, v in s.items()}, step=i)
            wins = metrics.get("_windows", [])
            if wins:
                cols = list(wins[0].keys())
                run.log({"eval/windows": wandb.Table(columns=cols, data=[[w.get(c) for c in cols] for w in wins])})
            run.summary.update(scalars(metrics))
            row = make_row(metrics, info)
            run.log({"results": wandb.Table(columns=list(row), data=[[str(v) for v in row.values()]])})
        finally:
            run.finish()

    def log_sweep(self, table: Path, plot: Path | None, sweep_dir: Path) -> None:
        """A ``sweep-summary`` run under <sweep dir>/wandb with the results table and plot."""
        import wandb

        self.console.log_sweep(table, plot, sweep_dir)
        rows = read_rows(table)
        cols = list(rows[0].keys()) if rows else []
        run = self._init(sweep_dir, f"{sweep_dir.name} summary", self.group or sweep_dir.name, "sweep-summary", {})
        try:
            run.log({"results": wandb.Table(columns=cols, data=[[r.get(c, "") for c in cols] for r in rows])})
            if plot is not None and plot.exists():
                run.log({"pareto": wandb.Image(str(plot))})
        finally:
            run.finish()

    def finish(self) -> None:
        return None

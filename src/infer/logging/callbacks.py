"""Hydra callback that draws the Pareto plot when a ``-m`` sweep ends (experiment=pareto)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig


class ParetoCallback(Callback):
    """At the end of a multirun: <sweep dir>/results.csv -> <sweep dir>/<out> (PNG), then the
    logger's ``log_sweep`` (W&B: a sweep-summary run with the table and the plot).

    Args:
        x, y: results-table columns for the axes (e.g. output_tok_s, kl_mean | delta_ppl).
        out: PNG file name inside the sweep dir.
        logy: symlog y axis.
    """

    def __init__(self, x: str = "output_tok_s", y: str = "kl_mean", out: str = "pareto.png",
                 logy: bool = False) -> None:
        self.x, self.y, self.out, self.logy = x, y, out, logy
        self._sweep_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._sweep_dir = Path(str(config.hydra.sweep.dir))  # resolve ${now:} once

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from infer.eval.pareto import plot_pareto

        sweep_dir = self._sweep_dir or Path(str(config.hydra.sweep.dir))
        table = sweep_dir / "results.csv"
        if not table.exists():
            print(f"pareto: no results table at {table}; nothing to plot")
            return
        png, front = plot_pareto(table, sweep_dir / self.out, self.x, self.y, logy=self.logy)
        print(f"pareto: {len(front)} point(s) on the front of {self.y} vs {self.x}: "
              + "; ".join(r.get("overrides", "") for r in front))
        sink_cfg = config.get("logger", {}).get("sink") if "logger" in config else None
        if sink_cfg is not None:
            sink = instantiate(sink_cfg)
            if hasattr(sink, "log_sweep"):
                sink.log_sweep(table, png, sweep_dir)

"""Console sink: prints a metrics line and writes metrics.json into the run dir."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class ConsoleLogger:
    """The default sink (``logger=console``)."""

    def log_summary(self, metrics: dict[str, Any], run_dir: Path) -> None:
        """Print ``metrics`` on one line and save them to ``run_dir/metrics.json``."""
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
        print("metrics: " + " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in scalars.items()
        ))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))

    def finish(self) -> None:
        return None

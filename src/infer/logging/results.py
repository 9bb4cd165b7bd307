"""The sweep results table: one CSV row per run, keyed by its config choices.

Rows are appended under an exclusive file lock (sweep points may run in parallel, e.g. on
SLURM); a row with new columns rewrites the file with the union of the columns.
"""

from __future__ import annotations

import csv
import fcntl
import math
from pathlib import Path
from typing import Any

from infer.logging.run_info import RunInfo


def scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scalar metrics (drops ``_``-prefixed payloads, lists and dicts)."""
    return {
        k: v for k, v in metrics.items()
        if not k.startswith("_") and isinstance(v, (int, float, str, bool)) and v is not None
    }


def results_path(setting: str | None, info: RunInfo) -> Path | None:
    """``auto`` = <sweep dir>/results.csv in a sweep, <run dir>/results.csv otherwise;
    ``sweep`` = <sweep dir>/results.csv in a sweep, no table otherwise; None/'' = no table;
    anything else is a path."""
    if not setting:
        return None
    if setting == "sweep":
        return info.sweep_dir / "results.csv" if info.sweep_dir is not None else None
    if setting == "auto":
        return (info.sweep_dir or info.run_dir) / "results.csv"
    return Path(setting).expanduser()


def make_row(metrics: dict[str, Any], info: RunInfo) -> dict[str, Any]:
    """point, overrides, one column per override key, group choices, scalar metrics."""
    row: dict[str, Any] = {"point": info.job_num if info.job_num is not None else "",
                           "overrides": info.label, "run_dir": str(info.run_dir)}
    for ov in info.overrides:
        k, _, v = ov.partition("=")
        row[k.lstrip("+~")] = v
    for g, opt in info.choices.items():
        row.setdefault(g, opt)
    for k, v in scalars(metrics).items():
        if k in row and k in info.choices:  # metrics carry labels, choices carry option names
            continue
        row[k] = v
    return row


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` to the CSV at ``path`` (created with a header if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = read_rows(path) if path.exists() else []
        header: list[str] = list(rows[0].keys()) if rows else []
        header += [k for k in row if k not in header]
        for r in rows:
            header += [k for k in r if k not in header]
        rows.append({k: _fmt(v) for k, v in row.items()})
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header, restval="")
            w.writeheader()
            w.writerows(rows)
        tmp.replace(path)


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    return v


def read_rows(path: Path) -> list[dict[str, str]]:
    """All rows of a results CSV as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))

"""Communication counters of a run (tensor / pipeline parallel): time in collectives and
point-to-point transfers per step, bytes all-reduced per token.

``engine.parallel.stats`` (parallel/state.py ``CommStats``) holds lifetime counters of this
rank; a run reports the difference between snapshots, like the speculation counters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# the columns a run reports (metrics.json, results tables, W&B)
COMM_COLUMNS = ("comm_ms_per_step", "comm_frac", "allreduce_bytes_per_token", "comm_calls_per_step")


def comm_snapshot(engine: Any) -> dict[str, float]:
    """This rank's communication counters now (zeros for a one-process engine)."""
    st = getattr(getattr(engine, "parallel", None), "stats", None)
    if st is None:
        return {"seconds": 0.0, "allreduce_bytes": 0.0, "calls": 0.0}
    return {"seconds": float(st.seconds), "allreduce_bytes": float(st.allreduce_bytes),
            "calls": float(st.calls)}


def comm_delta(before: Mapping[str, float], after: Mapping[str, float], steps: float,
               tokens: float, elapsed_s: float) -> dict[str, float]:
    """Per-step and per-token communication of the work between two snapshots.

    ``tokens``: tokens fed to the model in that work (prompt tokens computed + output tokens);
    comm_frac: share of the wall time spent communicating (this rank's view)."""
    secs = after["seconds"] - before["seconds"]
    return {
        "comm_ms_per_step": 1000.0 * secs / steps if steps else 0.0,
        "comm_frac": secs / elapsed_s if elapsed_s > 0 else 0.0,
        "allreduce_bytes_per_token": (after["allreduce_bytes"] - before["allreduce_bytes"]) / tokens if tokens else 0.0,
        "comm_calls_per_step": (after["calls"] - before["calls"]) / steps if steps else 0.0,
    }

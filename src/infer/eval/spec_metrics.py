"""Speculative-decoding counters of a bench run: drafted, accepted, acceptance, draft/verify time.

The engine keeps lifetime counters (``EngineStats.spec_*``, ``draft_time``, ``verify_time``);
a bench run reports the difference between a snapshot taken before it and one after, so
warm-up and earlier runs never leak into its numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# snapshot keys read from EngineStats (all monotone counters)
_COUNTERS = ("spec_drafted", "spec_accepted", "spec_steps", "draft_time", "verify_time")

# the columns a bench run reports (metrics.json, the results table, W&B), in table order
SPEC_COLUMNS = (
    "spec_drafted",
    "spec_accepted",
    "spec_steps",
    "acceptance_rate",
    "acceptance_length",
    "draft_time_s",
    "verify_time_s",
    "draft_time_frac",
)


def snapshot(stats: Any) -> dict[str, float]:
    """The engine's speculation counters now (``engine.stats``)."""
    return {k: float(getattr(stats, k, 0.0)) for k in _COUNTERS}


def spec_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """Speculation metrics of the work done between two snapshots.

    spec_drafted / spec_accepted: draft tokens proposed / accepted; spec_steps: verify steps
    of a sequence that carried at least one draft; acceptance_rate = accepted / drafted (0
    without drafts); acceptance_length = 1 + accepted / spec_steps (tokens emitted per verify
    step; 1 without drafts); draft_time_s: seconds in the proposer; verify_time_s: seconds
    in the target forward plus verification; draft_time_frac: draft / (draft + verify).
    """
    d = {k: float(after[k]) - float(before.get(k, 0.0)) for k in _COUNTERS}
    drafted, accepted, steps = d["spec_drafted"], d["spec_accepted"], d["spec_steps"]
    busy = d["draft_time"] + d["verify_time"]
    return {
        "spec_drafted": drafted,
        "spec_accepted": accepted,
        "spec_steps": steps,
        "acceptance_rate": accepted / drafted if drafted else 0.0,
        "acceptance_length": 1.0 + accepted / steps if steps else 1.0,
        "draft_time_s": d["draft_time"],
        "verify_time_s": d["verify_time"],
        "draft_time_frac": d["draft_time"] / busy if busy > 0 else 0.0,
    }


def format_spec_table(rows: Sequence[Mapping[str, Any]], label: str = "spec") -> str:
    """A markdown table, one row per run: ``label``, output tok/s, TPOT p50 and the speculation
    columns (missing values print empty)."""
    cols = [
        "output_tok_s",
        "tpot_ms_p50",
        "spec_drafted",
        "spec_accepted",
        "acceptance_rate",
        "acceptance_length",
        "draft_time_s",
        "verify_time_s",
    ]
    head = [
        label,
        "output tok/s",
        "TPOT p50 ms",
        "drafted",
        "accepted",
        "accept rate",
        "accept length",
        "draft s",
        "verify s",
    ]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r.get(label, ""))] + [_cell(r.get(c)) for c in cols]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _cell(v: Any) -> str:
    if v is None or isinstance(v, str):
        return "" if v is None else v
    f = float(v)
    return (
        f"{int(f)}"
        if f.is_integer() and abs(f) >= 10
        else f"{f:.3g}"
        if abs(f) < 10
        else f"{f:.1f}"
    )

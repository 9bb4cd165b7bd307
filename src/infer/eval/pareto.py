"""Accuracy-vs-throughput Pareto front of a results table, and its plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from infer.logging.results import read_rows

# axis -> (larger is better, axis title)
AXES = {
    "output_tok_s": (True, "output tokens/s"),
    "total_tok_s": (True, "total tokens/s"),
    "req_s": (True, "requests/s"),
    "kl_mean": (False, "mean KL to reference (nats)"),
    "kl_p99": (False, "p99 KL to reference (nats)"),
    "delta_ppl": (False, "delta perplexity vs reference"),
    "ppl": (False, "perplexity"),
    "top1_agree": (True, "top-1 agreement with reference"),
    "ttft_ms_p50": (False, "TTFT p50 (ms)"),
    "tpot_ms_p50": (False, "TPOT p50 (ms)"),
    "peak_mem_mb": (False, "peak memory (MiB)"),
}


def _num(v: str | None) -> float:
    try:
        return float(v) if v not in (None, "") else math.nan
    except ValueError:
        return math.nan


def pareto_front(xs: list[float], ys: list[float], x_max: bool = True, y_max: bool = False) -> list[int]:
    """Indices of the non-dominated points (no other point at least as good on both axes and
    better on one), sorted by x."""
    sx = [x if x_max else -x for x in xs]
    sy = [y if y_max else -y for y in ys]
    front = []
    for i in range(len(xs)):
        dominated = any(
            sx[j] >= sx[i] and sy[j] >= sy[i] and (sx[j] > sx[i] or sy[j] > sy[i])
            for j in range(len(xs)) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: xs[i])


def varied_overrides(rows: list[dict[str, str]]) -> list[list[str]]:
    """Each row's overrides minus those shared by every row (what the sweep varied)."""
    toks = [r.get("overrides", "").split() for r in rows]
    common = set(toks[0]).intersection(*toks[1:]) if toks else set()
    return [[t for t in ts if t not in common] for ts in toks]


def point_labels(rows: list[dict[str, str]]) -> list[str]:
    """Short labels: the varied override values joined by '/' (e.g. 'radix/bfloat16')."""
    labels = ["/".join(t.partition("=")[2] or t for t in ts) for ts in varied_overrides(rows)]
    return [lab or r.get("point", "") or "run" for lab, r in zip(labels, rows)]


# label offsets tried in turn (points): right of the point first, then above / below it
_LABEL_OFFSETS = [(7, 0), (7, 11), (7, -11), (-7, 0), (7, 22), (7, -22), (-7, 11), (-7, -11)]


def _place_labels(fig: Any, ax: Any, xs: list[float], ys: list[float], labels: list[str]) -> None:
    """Label every point at the first offset whose text box overlaps neither an earlier
    label nor another point (the first offset if none is free), so close points keep
    their labels apart and each label sits beside its own point."""
    renderer = fig.canvas.get_renderer()
    pts = ax.transData.transform(list(zip(xs, ys)))
    placed: list[Any] = []

    def annotate(i: int, dx: int, dy: int) -> Any:
        return ax.annotate(labels[i], (xs[i], ys[i]), textcoords="offset points", xytext=(dx, dy),
                           fontsize=7, va="center", ha="left" if dx > 0 else "right")

    for i in sorted(range(len(xs)), key=lambda j: (xs[j], ys[j])):
        for dx, dy in _LABEL_OFFSETS:
            t = annotate(i, dx, dy)
            box = t.get_window_extent(renderer).expanded(1.05, 1.2)
            hits_point = any(box.contains(px, py) for j, (px, py) in enumerate(pts) if j != i)
            if not (hits_point or any(box.overlaps(b) for b in placed)):
                placed.append(box)
                break
            t.remove()
        else:  # no free spot: the first offset, overlapping
            placed.append(annotate(i, *_LABEL_OFFSETS[0]).get_window_extent(renderer))


def plot_pareto(
    table: Path, out: Path, x: str = "output_tok_s", y: str = "kl_mean",
    title: str | None = None, logy: bool = False,
) -> tuple[Path, list[dict[str, str]]]:
    """Scatter ``y`` against ``x`` for every row of the CSV ``table``, the Pareto front
    marked and joined; saves a PNG to ``out``. Returns (out, the front's rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_rows(table) if math.isfinite(_num(r.get(x))) and math.isfinite(_num(r.get(y)))]
    if not rows:
        raise ValueError(f"{table}: no row has numeric {x!r} and {y!r}")
    xs, ys = [_num(r[x]) for r in rows], [_num(r[y]) for r in rows]
    x_max, x_title = AXES.get(x, (True, x))
    y_max, y_title = AXES.get(y, (False, y))
    front = pareto_front(xs, ys, x_max, y_max)
    labels = point_labels(rows)

    keys = [t.partition("=")[0] for t in (varied_overrides(rows) or [[]])[0]]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.scatter(xs, ys, c="tab:gray", label="sweep point", zorder=2)
    fx, fy = [xs[i] for i in front], [ys[i] for i in front]
    # the boundary of what the front dominates: a staircase when better = right and down/up
    ax.step(fx, fy, "-", where="pre" if y_max != x_max else "post", c="tab:red", zorder=3)
    ax.scatter(fx, fy, c="tab:red", label="Pareto front", zorder=4)
    lo, hi = min(xs), max(xs)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.1 or 1.0
    ax.set_xlim(lo - pad, hi + 3 * pad)  # room for the labels on the right
    ax.set_xlabel(f"{x_title} ({'higher' if x_max else 'lower'} is better)")
    ax.set_ylabel(f"{y_title} ({'higher' if y_max else 'lower'} is better)")
    if logy:
        ax.set_yscale("symlog", linthresh=max(min((v for v in ys if v > 0), default=1e-6), 1e-9))
    ax.set_title(title or f"{y} vs {x} ({len(rows)} points"
                 + (f"; labels: {' / '.join(keys)})" if keys else ")"), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    _place_labels(fig, ax, xs, ys, labels)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out, [rows[i] for i in front]

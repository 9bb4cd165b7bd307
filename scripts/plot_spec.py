"""Plot a ``scripts/bench_spec.py`` result: single-stream speed-up against acceptance length,
one point per proposer (median, bar = min..max over requests and rounds), and the offline
throughput ratio at max_num_seqs=32 beside it.

    python scripts/plot_spec.py experiments/03-speculative/bench_spec.json   # -> spec.png beside it
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def plot(result: dict, out: Path, extra: dict | None = None) -> Path:
    """``extra``: another bench_spec.py result whose throughput runs are drawn beside
    ``result``'s (bars labelled by run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    single = result.get("single_stream", {})
    for name, v in single.items():
        x, y = v["acceptance_length"], v["speedup_median"]
        err = [[y - v["speedup_min"]], [v["speedup_max"] - y]]
        ax.errorbar([x], [y], yerr=err, fmt="o", capsize=3, label=name)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.axhline(2.0, color="tab:red", lw=0.8, ls=":", label="target 2x (ngram)")
    ax.set_xlabel("acceptance length (tokens per verify step)")
    ax.set_ylabel("single-stream decode speed-up vs spec=none")
    ax.set_title("grounded workload, 1 request at a time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")

    tp = {}
    for tag, res in (("run 1", result), ("run 2", extra or {})):
        for n, v in res.get("throughput", {}).items():
            if n != "none":
                tp[f"{n}\n({tag})" if extra else n] = v
    names = list(tp)
    bx.bar(names, [tp[n]["ratio_median"] for n in names], color="tab:blue")
    for i, n in enumerate(names):
        for r in tp[n]["ratios"]:
            bx.plot([i], [r], "k.", ms=4)
    bx.axhline(0.95, color="tab:red", lw=0.8, ls=":", label="target 0.95x")
    bx.axhline(1.0, color="gray", lw=0.8, ls="--")
    allr = [r for n in names for r in tp[n]["ratios"]]
    bx.set_ylim(min([0.8, *allr]) - 0.05, max([1.05, *allr]) + 0.05)
    bx.set_ylabel("offline output tok/s vs spec=none")
    bx.set_title("synthetic workload, max_num_seqs=32")
    bx.legend(fontsize=7)
    m = result.get("machine", {})
    model = result.get("args", {}).get("model", "smollm2")
    fig.suptitle(f"model={model} fp32, greedy, {m.get('threads', 1)} thread(s), {m.get('cores', '?')}-core "
                 f"shared machine (load avg median {result.get('load1', {}).get('median', 0):.1f})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("result", type=Path, help="bench_spec.py JSON")
    ap.add_argument("--out", type=Path, default=None, help="PNG (default: spec.png beside the JSON)")
    ap.add_argument("--throughput", type=Path, default=None, help="a second result whose throughput runs to add")
    a = ap.parse_args()
    extra = json.loads(a.throughput.read_text()) if a.throughput else None
    print(plot(json.loads(a.result.read_text()), a.out or a.result.with_name("spec.png"), extra))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

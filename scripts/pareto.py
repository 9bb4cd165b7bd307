"""Draw the accuracy-vs-throughput Pareto plot of any results table.

    python scripts/pareto.py multirun/pareto/<date>/results.csv                 # -> pareto.png beside it
    python scripts/pareto.py results.csv --x output_tok_s --y delta_ppl --out dppl.png --logy

The same plot is drawn automatically at the end of `python run.py -m experiment=pareto ...`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from infer.eval.pareto import AXES, plot_pareto


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table", type=Path, help="results CSV (one row per sweep point)")
    ap.add_argument("--x", default="output_tok_s", help=f"throughput column (known: {', '.join(AXES)})")
    ap.add_argument("--y", default="kl_mean", help="accuracy column (kl_mean, kl_p99, delta_ppl, top1_agree, ...)")
    ap.add_argument("--out", type=Path, default=None, help="PNG path (default: pareto.png beside the table)")
    ap.add_argument("--title", default=None, help="plot title")
    ap.add_argument("--logy", action="store_true", help="symlog y axis")
    a = ap.parse_args(argv)
    out = a.out or a.table.with_name("pareto.png")
    png, front = plot_pareto(a.table, out, a.x, a.y, title=a.title, logy=a.logy)
    print(f"Pareto front ({a.y} vs {a.x}), {len(front)} point(s):")
    for r in front:
        print(f"  {a.x}={float(r[a.x]):.4g}  {a.y}={float(r[a.y]):.4g}  {r.get('overrides', '')}")
    print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""All-reduce latency per message size per backend (gloo, shared memory), one run side by side.

Spawns ``--world`` processes (default 2) on this machine with a gloo process group on
127.0.0.1, one torch thread each. For every fp32 message size (default 576 = one SmolLM2 hidden
row, 4k, 64k, 1M floats) the backends take turns in rounds (so drifting machine load hits
them alike); each rank times every in-place ``all_reduce_sum`` back to back. Printed per size
and backend: median, 10th and 90th percentile latency in microseconds over rank 0's timings,
and the bus bandwidth 2 (n-1)/n * bytes / median. Also saved as JSON with the load average.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_comm.py [--world 2] [--sizes 576 4096]
        [--backends gloo shm] [--iters-scale 1.0] [--out bench_comm.json]

The machines are shared and noisy: compare backends within one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist

from infer.parallel.comm import make_comm
from infer.parallel.comm.local import run_local

# back-to-back iterations per size at --iters-scale 1 (about a second of gloo per size)
ITERS = {576: 2000, 4096: 1000, 65536: 200, 1 << 20: 30}
ROUNDS = 5  # backends alternate this many times per size


def _iters(n: int, scale: float) -> int:
    base = ITERS.get(n, max(20, int(2e6 / max(n, 1))))
    return max(5, int(base * scale))


def _rank(rank: int, world: int, sizes: list[int], backends: list[str], scale: float,
          out: str) -> None:
    comms = {b: make_comm(b, device="cpu") for b in backends}
    rows = []
    for n in sizes:
        x = torch.randn(n)
        per = _iters(n, scale)
        times: dict[str, list[float]] = {b: [] for b in backends}
        for b in backends:  # warm-up
            for _ in range(max(3, per // 10)):
                comms[b].all_reduce_sum(x)
        for _ in range(ROUNDS):
            for b in backends:
                c, t = comms[b], times[b]
                dist.barrier()
                for _ in range(max(1, per // ROUNDS)):
                    t0 = time.perf_counter()
                    c.all_reduce_sum(x)
                    t.append(time.perf_counter() - t0)
                x.fill_(1.0 / world)  # keep values bounded after many in-place sums
        for b in backends:
            q = statistics.quantiles(times[b], n=10)
            med = statistics.median(times[b])
            rows.append({"floats": n, "bytes": 4 * n, "backend": b, "iters": len(times[b]),
                         "median_us": med * 1e6, "p10_us": q[0] * 1e6, "p90_us": q[-1] * 1e6,
                         "busbw_GBps": 2 * (world - 1) / world * 4 * n / med / 1e9})
    for c in comms.values():
        c.close()
    if rank == 0:
        with open(out, "w") as f:
            json.dump(rows, f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", type=int, default=2, help="processes (ranks) on this machine")
    ap.add_argument("--sizes", type=int, nargs="+", default=list(ITERS), help="fp32 elements")
    ap.add_argument("--backends", nargs="+", default=["gloo", "shm"],
                    choices=["gloo", "shm", "auto"])
    ap.add_argument("--iters-scale", type=float, default=1.0, help="multiply iteration counts")
    ap.add_argument("--out", default="bench_comm.json")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        tmp = os.path.join(d, "rows.json")
        t0 = time.time()
        run_local(_rank, a.world, a.sizes, a.backends, a.iters_scale, tmp)
        with open(tmp) as f:
            rows = json.load(f)
    meta = {"world": a.world, "threads_per_rank": 1, "cpus": os.cpu_count(),
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            "wall_s": round(time.time() - t0, 1), "torch": torch.__version__}
    print(f"all-reduce fp32, {a.world} ranks x 1 thread, {meta['cpus']} CPUs, load average "
          f"{load_before[0]:.2f} before / {meta['loadavg_after'][0]:.2f} after")
    print(f"{'floats':>9} {'bytes':>9} {'backend':>7} {'iters':>6} {'median us':>10} "
          f"{'p10 us':>9} {'p90 us':>9} {'busbw GB/s':>10}")
    for r in rows:
        print(f"{r['floats']:>9} {r['bytes']:>9} {r['backend']:>7} {r['iters']:>6} "
              f"{r['median_us']:>10.1f} {r['p10_us']:>9.1f} {r['p90_us']:>9.1f} "
              f"{r['busbw_GBps']:>10.2f}")
    by = {(r["floats"], r["backend"]): r["median_us"] for r in rows}
    for n in a.sizes:
        if (n, "gloo") in by and (n, "shm") in by:
            print(f"{n:>9} floats: shm is {by[(n, 'gloo')] / by[(n, 'shm')]:.1f}x faster than gloo")
    with open(a.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"saved {a.out}")


if __name__ == "__main__":
    main()

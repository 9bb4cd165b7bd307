"""A stand-in peer engine speaking the peer JSON protocol (infer/eval/peer_runners/peer_io.py).

Run by the tests as ``python fake_peer.py job.json result.json``. It answers each request
from ``options.table`` ([[prompt ids, output ids], ...], truncated to max_tokens; unknown
prompts get zeros) after sleeping ``options.sec_per_token`` per generated token, so its
throughput is known and its outputs can differ from ours where a test wants them to.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src" / "infer" / "eval" / "peer_runners"))
from peer_io import read_job, serve


def main() -> None:
    job, out = read_job()
    opts = job.get("options") or {}
    table = {tuple(p): list(o) for p, o in opts.get("table", [])}
    delay = float(opts.get("sec_per_token", 0.0))

    def generate(reqs: list[tuple[list[int], int]]) -> list[list[int]]:
        time.sleep(delay * sum(n for _, n in reqs))
        return [(table.get(tuple(p), []) + [0] * n)[:n] for p, n in reqs]

    serve(job, out, generate, 0.0, "fake-1", {"threads": job["threads"], "cores": job["cores"]})


if __name__ == "__main__":
    main()

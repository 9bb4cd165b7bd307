"""Peer runner: OpenVINO GenAI's continuous-batching pipeline on an exported IR; see peer_io.py.

Run by the OpenVINO venv's python. The CPU plugin otherwise picks bf16 compute, a u8 KV cache
and dynamic int8 activations on CPUs that support them; the properties below force the same
precision as the job's dtype (f32 for float32) so greedy tokens stay comparable.
"""

from __future__ import annotations

import time
from typing import Any

from peer_io import read_job, serve

PRECISION = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def main() -> None:
    job, out_path = read_job()
    opts: dict[str, Any] = dict(job.get("options") or {})
    import openvino as ov
    import openvino_genai as g

    prec = PRECISION[job["dtype"]]
    props = {"INFERENCE_NUM_THREADS": int(job["threads"]), "NUM_STREAMS": 1,
             "INFERENCE_PRECISION_HINT": prec, "KV_CACHE_PRECISION": prec,
             "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0, **opts.pop("properties", {})}
    sched = g.SchedulerConfig()
    sched.cache_size = int(opts.pop("cache_size_gb", 4))
    sched.max_num_seqs = int(opts.pop("max_num_seqs", 64))
    sched.enable_prefix_caching = False  # the single-stream difference must re-run prefill
    t = time.perf_counter()
    pipe = g.ContinuousBatchingPipeline(job["ir_dir"], sched, "CPU", props)
    startup = time.perf_counter() - t

    def generate(reqs: list[tuple[list[int], int]]) -> list[list[int]]:
        ids = [ov.Tensor(_int64_row(p)) for p, _ in reqs]
        cfgs = []
        for _, n in reqs:
            c = g.GenerationConfig()
            c.max_new_tokens, c.min_new_tokens, c.ignore_eos, c.do_sample = n, n, True, False
            cfgs.append(c)
        return [list(r.m_generation_ids[0]) for r in pipe.generate(ids, cfgs)]

    settings = {**props, "cache_size_gb": sched.cache_size, "max_num_seqs": sched.max_num_seqs,
                "enable_prefix_caching": False}
    serve(job, out_path, generate, startup, g.__version__, settings)


def _int64_row(ids: list[int]) -> Any:
    import numpy as np

    return np.asarray([ids], dtype=np.int64)


if __name__ == "__main__":
    main()

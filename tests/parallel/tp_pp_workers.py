"""Rank bodies for test_tp_pp.py (spawned processes import this module by name).

Every rank builds the same engines and makes the same calls (SPMD); each writes its outputs
to ``out_dir/rank<r>.json`` so the test can check that all ranks agree and that rank 0
equals the one-process engine.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any


def generate(params: dict[str, Any], prompts: list[list[int]], folder: str, overrides: list[str],
             knobs: dict[str, Any]) -> tuple[list[list[int]], dict[str, float]]:
    """Greedy (or seeded) outputs of ``prompts`` and a few engine counters."""
    from infer.api import LLM
    from infer.sampling_params import SamplingParams

    llm = LLM(model=folder, overrides=overrides, threads=1, **knobs)
    try:
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(**params),
                            use_tqdm=False)
        eng = llm.engine
        st = getattr(getattr(eng, "parallel", None), "stats", None)
        info = {
            "preemptions": float(eng.scheduler.num_preemptions),
            "allreduce_bytes": float(st.allreduce_bytes) if st else 0.0,
            "comm_calls": float(st.calls) if st else 0.0,
            "spec_accepted": float(eng.stats.spec_accepted),
        }
        return [list(o.outputs[0].token_ids) for o in outs], info
    finally:
        par = getattr(llm.engine, "parallel", None)
        if par is not None:
            par.close()
        del llm
        gc.collect()


def run_cases(rank: int, world: int, cases: list[dict[str, Any]], out_dir: str) -> None:
    """Run every case (name, folder, overrides, knobs, prompts, params) on this rank."""
    res = {}
    for c in cases:
        toks, info = generate(c["params"], c["prompts"], c["folder"], c["overrides"], c.get("knobs", {}))
        res[c["name"]] = {"tokens": toks, "info": info}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(res))

"""Tensor and pipeline parallelism against one process, token for token.

Oracle: the plain one-process engine on the same checkpoint. Sharded layers add partial
sums in a different order (row-parallel all-reduces), so logits can differ from one
process in the last bits. A greedy token may then flip only where the one-process top two
logits nearly tie: at the first difference the test requires the one-process log-prob gap
between the two tokens to be below 1e-4 (a tie) and stops comparing that sequence there
(its continuations legitimately differ). Every rank's outputs must equal rank 0's exactly
(accepted tokens are broadcast).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import tp_pp_workers as w

from infer.parallel.comm.local import run_local

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm (Linux)")

TIE = 1e-4
PROMPTS = [list(range(7 + 5 * i, 19 + 11 * i)) for i in range(4)]
GREEDY = {"temperature": 0.0, "max_tokens": 12, "ignore_eos": True}


def reference(folder: str, overrides: list[str], knobs: dict[str, Any], prompts: list[list[int]],
              params: dict[str, Any]) -> list[Any]:
    """One-process outputs with the top-2 log-probs of every sampled position."""
    from infer.api import LLM
    from infer.sampling_params import SamplingParams

    ov = [o for o in overrides if not o.startswith("parallel")]
    llm = LLM(model=folder, overrides=ov, threads=1, **knobs)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(**params, logprobs=2), use_tqdm=False)
    return [o.outputs[0] for o in outs]


def assert_same_or_tie(name: str, ref: list[Any], got: list[list[int]]) -> None:
    for i, (r, g) in enumerate(zip(ref, got, strict=True)):
        want = list(r.token_ids)
        assert len(g) == len(want), f"{name}[{i}]: {len(g)} tokens, one process made {len(want)}"
        for j, (a, b) in enumerate(zip(want, g)):
            if a == b:
                continue
            lps = r.logprobs[j]
            assert b in lps, f"{name}[{i}] token {j}: {b} is not in the one-process top 2 ({a} was chosen)"
            gap = lps[a].logprob - lps[b].logprob
            assert gap < TIE, f"{name}[{i}] token {j}: {b} != {a} with a one-process gap of {gap:.2e}"
            break


def run_and_check(world: int, cases: list[dict[str, Any]], tmp_path: Path) -> dict[str, Any]:
    refs = {c["name"]: reference(c["folder"], c["overrides"], c.get("knobs", {}), c["prompts"], c["params"])
            for c in cases}
    run_local(w.run_cases, world, cases, str(tmp_path), timeout_s=600.0)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    for c in cases:
        n = c["name"]
        for r in range(1, world):
            assert ranks[r][n]["tokens"] == ranks[0][n]["tokens"], f"{n}: rank {r} disagrees with rank 0"
        assert_same_or_tie(n, refs[n], ranks[0][n]["tokens"])
    return ranks[0]


def case(name: str, folder: Path, overrides: list[str], **knobs: Any) -> dict[str, Any]:
    return {"name": name, "folder": str(folder), "overrides": overrides, "knobs": knobs,
            "prompts": PROMPTS, "params": GREEDY}


def test_tiny_families_tp2_pp2(tiny_checkpoint, tmp_path: Path) -> None:
    """Tied (llama, qwen2 with qkv bias) and untied (qwen3 with q/k norms) models; shm and
    gloo; paged and radix attention."""
    cases = []
    for fam in ("llama", "qwen2", "qwen3"):
        f = tiny_checkpoint(fam)
        cases.append(case(f"{fam}-tp2-shm", f, ["parallel=tp", "parallel.comm=shm"]))
        cases.append(case(f"{fam}-pp2-gloo", f, ["parallel=pp", "parallel.comm=gloo", "attention=radix"]))
    res = run_and_check(2, cases, tmp_path)
    assert res["llama-tp2-shm"]["info"]["allreduce_bytes"] > 0
    assert res["qwen3-pp2-gloo"]["info"]["allreduce_bytes"] == 0  # a pipeline has no all-reduce


def test_tiny_tp2_pp2_four_processes(tiny_checkpoint, tmp_path: Path) -> None:
    cases = [case("llama3-tp2pp2-shm", tiny_checkpoint("llama3"), ["parallel=tp_pp", "parallel.comm=shm"]),
             case("qwen2-tp2pp2-gloo", tiny_checkpoint("qwen2"), ["parallel=tp_pp", "parallel.comm=gloo",
                                                                  "attention=radix"])]
    run_and_check(4, cases, tmp_path)


def test_smollm2_tp2_pp2(tokenizer_dir: Path, tmp_path: Path) -> None:
    """SmolLM2: 9 query / 3 KV heads split 6 + 3 over two ranks; int8 and awq weights; int8
    and fp8 KV caches; preemption in a small KV cache; n-gram and layer-skip speculation; seeded sampling."""
    f = tokenizer_dir
    small = {"kv_cache_tokens": 256, "max_model_len": 256}
    cases = [
        case("tp2-paged", f, ["parallel=tp"]),
        case("pp2-radix-int8", f, ["parallel=pp", "attention=radix", "quant=int8"]),
        case("tp2-awq", f, ["parallel=tp", "quant=awq"]),
        case("tp2-preempt", f, ["parallel=tp"], **small),
        case("tp2-ngram", f, ["parallel=tp", "spec=ngram"]),
        case("tp2-ngram-seeded", f, ["parallel=tp", "spec=ngram"]),
        case("tp2-kv-int8", f, ["parallel=tp", "kv_cache_dtype=int8"]),
        case("tp2-self-layers", f, ["parallel=tp", "spec=self"]),  # drafts on the sharded layers
        case("pp2-kv-fp8", f, ["parallel=pp", "kv_cache_dtype=fp8"]),
    ]
    # sampled: a flip needs a uniform draw within float noise of a CDF boundary (~1e-6)
    cases[5]["params"] = {"temperature": 0.8, "top_p": 0.9, "seed": 7, "max_tokens": 16, "ignore_eos": True}
    cases[3]["prompts"] = [list(range(100 + 7 * i, 160 + 7 * i)) for i in range(5)]
    cases[3]["params"] = {**GREEDY, "max_tokens": 24}
    res = run_and_check(2, cases, tmp_path)
    assert res["tp2-preempt"]["info"]["preemptions"] > 0, "the small cache did not preempt"


def test_smollm2_tp3(tokenizer_dir: Path, tmp_path: Path) -> None:
    run_and_check(3, [case("tp3", tokenizer_dir, ["parallel=tp", "parallel.tp_size=3"])], tmp_path)

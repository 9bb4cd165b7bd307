"""``LLM(parallel="tp", tp_size=2)`` in one Python process: it starts its worker, stays in
lockstep through bad requests and aborts, and leaves no process behind.

Oracle: the one-process LLM on the same tiny checkpoint (greedy: identical token ids)."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import signal
from pathlib import Path

import pytest
from token_task import PROMPTS

from infer import LLM
from infer.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=6)
ITEMS = [{"prompt_token_ids": p} for p in PROMPTS]


def tokens(llm: LLM) -> list[list[int]]:
    return [r.outputs[0].token_ids for r in llm.generate(ITEMS, GREEDY, use_tqdm=False)]


def gone(pid: int) -> bool:
    """True once ``pid`` no longer exists (joined: not even a zombie)."""
    return not Path(f"/proc/{pid}").exists()


@pytest.fixture(scope="module")
def folder(tiny_checkpoint) -> str:  # type: ignore[no-untyped-def]
    return str(tiny_checkpoint("llama"))


@pytest.fixture(scope="module")
def ref(folder: str) -> list[list[int]]:
    llm = LLM(model=folder, threads=1)
    out = tokens(llm)
    del llm
    return out


def test_tp_equals_one_process_and_del_leaves_nothing(folder: str, ref: list[list[int]]) -> None:
    llm = LLM(model=folder, threads=1, parallel="tp", tp_size=2)
    assert llm.engine.parallel.world_size == 2
    pids = [p.pid for p in llm._executor.procs]
    assert len(pids) == 1 and not gone(pids[0])
    assert os.environ.get("RANK") == "0"
    assert tokens(llm) == ref
    del llm
    gc.collect()
    assert all(gone(p) for p in pids), f"workers left: {pids}"
    assert not mp.active_children()
    assert "RANK" not in os.environ  # rank 0's launcher variables are restored


def test_lockstep_through_bad_requests_then_dead_worker(folder: str, ref: list[list[int]]) -> None:
    tp = LLM(model=folder, threads=1, parallel="tp", tp_size=2)
    with pytest.raises(RuntimeError, match="already drives a multi-process LLM"):
        LLM(model=folder, threads=1, parallel="tp", tp_size=2)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tp.generate([ITEMS[0], {"prompt_token_ids": [10**9]}], GREEDY, use_tqdm=False)
    rid = tp.engine.add_request(None, PROMPTS[0], GREEDY, request_id="mine")
    with pytest.raises(ValueError, match="duplicate request_id"):
        tp.engine.add_request(None, PROMPTS[1], GREEDY, request_id="mine")
    tp.engine.abort(rid)
    # a stream closed early aborts its request on every rank
    it = tp.stream(ITEMS[1], GREEDY)
    assert next(it).outputs[0].token_ids == ref[1][:1]
    it.close()
    assert not tp.engine.has_unfinished()
    assert tokens(tp) == ref  # still in lockstep: the worker's collectives line up

    proc = tp._executor.procs[0]
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    with pytest.raises(RuntimeError, match="worker rank 1 of 2 exited"):
        tokens(tp)
    tp.shutdown()
    tp.shutdown()  # idempotent
    assert gone(proc.pid) and not mp.active_children()

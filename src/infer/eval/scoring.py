"""Logits for every position of a token window, through the engine's real runner.

The window runs as one prefill (or ``chunk``-sized prefill chunks) of a private sequence
whose KV blocks come from the engine's own cache manager, so the configured attention
backend, KV cache, quantization and kernels are exactly what is measured.
Only ``runner.execute``, ``cache.allocate/free/block_table``, ``Sequence`` and
``ScheduledSeq`` are used, so engine internals may change underneath.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import torch

from infer.parallel.state import require_one_process
from infer.sampling_params import SamplingParams
from infer.scheduler import ScheduledSeq
from infer.sequence import SeqStatus, Sequence

# negative ids never collide with the engine's own (which count up from 0)
_score_ids = itertools.count(start=-1, step=-1)


def score_tokens(engine: Any, token_ids: list[int], chunk: int | None = None) -> torch.Tensor:
    """Run ``token_ids`` (no BOS is added) through the engine's model.

    Args:
        engine: a built ``Engine`` (uses ``engine.runner`` and ``engine.scheduler.cache``).
        token_ids: n >= 1 token ids, n <= the engine's max_model_len.
        chunk: tokens per forward (None = the whole window in one forward).
    Returns:
        fp32 logits [n, vocab] on CPU; row i is the distribution of token i + 1.
    Side effects: borrows KV blocks for the window and frees them before returning.
    """
    n = len(token_ids)
    max_len = getattr(engine, "max_model_len", None)
    if n == 0:
        raise ValueError("score_tokens needs at least one token")
    if max_len is not None and n > max_len:
        raise ValueError(
            f"window of {n} tokens exceeds engine.max_model_len={max_len}; lower eval.window"
        )
    require_one_process(engine, "scoring (task=eval, lm-eval loglikelihood)")
    step = int(chunk) if chunk else n
    cache = engine.scheduler.cache
    seq = Sequence(
        seq_id=next(_score_ids), request_id=f"score{time.perf_counter_ns()}", prompt=None,
        prompt_token_ids=[int(t) for t in token_ids], params=SamplingParams(max_tokens=1),
        arrival=time.perf_counter(),
    )
    seq.status = SeqStatus.RUNNING
    out: list[torch.Tensor] = []
    try:
        while seq.num_computed_tokens < n:
            k = min(step, n - seq.num_computed_tokens)
            if not cache.allocate(seq, k):
                raise RuntimeError(
                    f"KV cache has no room for a {n}-token scoring window; free running "
                    "requests or raise engine.kv_cache_memory_gb"
                )
            logits = engine.runner.execute([ScheduledSeq(seq, k)], [cache.block_table(seq)], list(range(k)))
            out.append(logits.float().cpu())
            seq.num_computed_tokens += k
    finally:
        cache.free(seq)
    return torch.cat(out, 0)

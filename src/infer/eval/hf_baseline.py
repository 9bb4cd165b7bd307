"""HF transformers ``generate`` on the same workload: static batches, left padding, greedy,
same torch thread count as the engine (set process-wide by ``build``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from infer.eval.progress import progress
from infer.eval.workloads import Request


def load_hf(folder: Path, dtype: torch.dtype, device: torch.device) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).to(device).eval()


@torch.inference_mode()
def run_hf(model: Any, reqs: list[Request], batch_size: int, pad_id: int, device: torch.device) -> dict[str, float]:
    """Generate every request in workload order, ``batch_size`` at a time.

    Each batch decodes max(its max_tokens) tokens with EOS suppressed (static batching);
    only the tokens each request asked for count as output. Returns hf_elapsed_s,
    hf_output_tok_s, hf_total_tok_s.
    """
    n_in = sum(len(r.prompt_token_ids) for r in reqs)
    n_out = sum(r.max_tokens for r in reqs)
    batches = [reqs[i : i + batch_size] for i in range(0, len(reqs), batch_size)]
    _generate(model, reqs[:1], pad_id, device, max_new=2)  # warm-up
    bar = progress(total=len(batches), desc="hf baseline", unit="batch")
    start = time.perf_counter()
    for b in batches:
        _generate(model, b, pad_id, device, max_new=max(r.max_tokens for r in b))
        bar.update(1)
    elapsed = time.perf_counter() - start
    bar.close()
    return {"hf_elapsed_s": elapsed, "hf_output_tok_s": n_out / elapsed, "hf_total_tok_s": (n_in + n_out) / elapsed}


def _generate(model: Any, batch: list[Request], pad_id: int, device: torch.device, max_new: int) -> torch.Tensor:
    """Left-padded greedy generate of exactly ``max_new`` tokens per row."""
    width = max(len(r.prompt_token_ids) for r in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, r in enumerate(batch):
        n = len(r.prompt_token_ids)
        ids[i, width - n :] = torch.tensor(r.prompt_token_ids)
        mask[i, width - n :] = 1
    return model.generate(
        input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new,
        min_new_tokens=max_new, do_sample=False, pad_token_id=pad_id,
        temperature=None, top_p=None, top_k=None,
    )

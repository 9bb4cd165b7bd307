"""task=eval's perplexity of SmolLM2 equals HF transformers' on the same text and windows."""

from __future__ import annotations

import gc
import math

import torch

from infer import build, compose_config
from infer.eval.data import corpus_ids, load_text, windows
from infer.eval.evaluate import cache_dir_of
from infer.tasks.eval import run as eval_run

WINDOW, N_WINDOWS = 512, 2


def test_smollm2_perplexity_matches_hf() -> None:
    cfg = compose_config(
        ["task=eval", "eval.divergence=false"],
        {"eval.window": WINDOW, "eval.max_windows": N_WINDOWS,
         "engine.max_model_len": 1024, "engine.kv_cache_tokens": 1024},
    )
    engine = build(cfg)
    ours = eval_run(engine, cfg)
    assert ours["eval_windows"] == N_WINDOWS and ours["eval_tokens"] == N_WINDOWS * (WINDOW - 1)

    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(engine.model_path), dtype=torch.float32).eval()
    ids = corpus_ids(engine.tokenizer, load_text(cfg.eval.data, cache_dir_of(cfg)))
    nll_sum, n = 0.0, 0
    with torch.inference_mode():
        for w in windows(ids, WINDOW, N_WINDOWS):  # no BOS: the window is the whole input
            logits = hf(torch.tensor([w])).logits[0, :-1].float()
            nll_sum += float(torch.nn.functional.cross_entropy(logits, torch.tensor(w[1:]), reduction="sum"))
            n += WINDOW - 1
    ppl_hf = math.exp(nll_sum / n)
    print(f"SmolLM2 perplexity on {N_WINDOWS}x{WINDOW} tokens of {cfg.eval.data}: "
          f"infer {ours['ppl']:.4f}, HF {ppl_hf:.4f}")
    assert abs(ours["ppl"] - ppl_hf) / ppl_hf < 0.005
    assert 3.0 < ppl_hf < 40.0  # a real model on English prose, not noise
    del engine, hf
    gc.collect()

"""``task=eval`` core: perplexity, divergence from the reference, greedy agreement."""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from infer.eval.data import corpus_ids, eval_part, load_text, windows
from infer.eval.divergence import DivergenceAccumulator
from infer.eval.greedy import agreement, corpus_prompts, generate_greedy
from infer.eval.perplexity import perplexity, token_nll
from infer.eval.progress import progress
from infer.eval.reference import (
    ReferenceStore,
    build_reference,
    derive_config,
    reference_key,
    same_engine,
)


def cache_dir_of(cfg: DictConfig) -> Path:
    """``cfg.cache_dir`` or the default ($INFER_CACHE_DIR or ~/.cache/infer)."""
    from infer.models.sources import default_cache_dir

    c = cfg.get("cache_dir")
    return Path(c).expanduser() if c else default_cache_dir()


def eval_inputs(ids: list[int], e: DictConfig) -> tuple[list[list[int]], list[list[int]]]:
    """The windows scored and the greedy prompts for ``cfg.eval`` = ``e``: both from the
    text's evaluation part (its first half; the second half is calibration's)."""
    part = eval_part(ids)
    wins = windows(part, int(e.window), e.max_windows)
    prompts = corpus_prompts(part, int(e.greedy_prompts), int(e.greedy_prompt_len)) if e.divergence else []
    return wins, prompts


def evaluate(engine: Any, cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.eval`` windows with ``engine`` and compare with the reference.

    Returns scalar metrics (ppl, eval_tokens, kl_*, top1_agree, delta_ppl, greedy_*,
    eval_s) plus ``_windows``: one dict per window (ppl, kl_mean, top1_agree).
    """
    e = cfg.eval
    t0 = time.perf_counter()
    cache = cache_dir_of(cfg)
    ids = corpus_ids(engine.tokenizer, load_text(str(e.data), cache, str(e.split), str(e.field)))
    wins, prompts = eval_inputs(ids, e)
    g_max = int(e.greedy_max_tokens)

    store: ReferenceStore | None = None
    same = False
    if e.divergence:
        from infer.models.sources import resolve_model_path

        ref_cfg = derive_config(cfg, list(e.reference))
        same = same_engine(cfg, ref_cfg)
        folder = resolve_model_path(ref_cfg.model.path, cache)
        store = ReferenceStore(cache / "eval_ref" / reference_key(ref_cfg, folder, e.ref_topk), e.ref_topk)
        missing = [w for w in wins if not store.has(w)]
        need_greedy = bool(prompts) and store.get_greedy(prompts, g_max) is None
        if not same and (missing or need_greedy):
            ref_engine = build_reference(
                ref_cfg, max(int(e.window), int(e.greedy_prompt_len) + g_max), max(len(prompts), 1)
            )
            for w in progress(iterable=missing, total=len(missing), desc="reference", unit="win"):
                store.put(w, _score(ref_engine, w, e))
            if need_greedy:
                store.put_greedy(prompts, g_max, generate_greedy(ref_engine, prompts, g_max, "reference greedy"))
            del ref_engine
            gc.collect()

    acc = DivergenceAccumulator()
    nlls, per_window = [], []
    for w in progress(iterable=wins, total=len(wins), desc="eval", unit="win"):
        logits = _score(engine, w, e)
        nll = token_nll(logits, w)
        nlls.append(nll)
        row: dict[str, Any] = {"window": len(per_window), "ppl": perplexity(nll)}
        if store is not None:
            ref = store.get(w) if store.has(w) else store.put(w, logits)
            acc.add(logits, nll, ref)
            row["kl_mean"] = float(acc.kl[-1].mean())
            row["top1_agree"] = float(acc.top1[-1].float().mean())
        per_window.append(row)
        del logits

    import torch

    all_nll = torch.cat(nlls)
    out: dict[str, Any] = {"ppl": perplexity(all_nll), "eval_tokens": int(all_nll.numel()),
                           "eval_windows": len(wins)}
    if store is not None:
        out.update(acc.summary())
        if prompts:
            cand = generate_greedy(engine, prompts, g_max, "greedy")
            if same and store.get_greedy(prompts, g_max) is None:
                store.put_greedy(prompts, g_max, cand)
            out.update(agreement(cand, store.get_greedy(prompts, g_max) or []))
        out["reference_is_self"] = same
    out["eval_s"] = time.perf_counter() - t0
    out["_windows"] = per_window
    return out


def _score(engine: Any, w: list[int], e: DictConfig) -> Any:
    from infer.eval.scoring import score_tokens

    return score_tokens(engine, w, e.get("chunk"))

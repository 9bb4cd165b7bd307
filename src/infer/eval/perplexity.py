"""Negative log-likelihood and perplexity from per-position logits."""

from __future__ import annotations

import math

import torch


def token_nll(logits: torch.Tensor, token_ids: list[int] | torch.Tensor) -> torch.Tensor:
    """NLL of every token of a window but its first.

    Args:
        logits: fp32 [n, vocab], row i predicting token i + 1 (``score_tokens`` output).
        token_ids: the n window tokens.
    Returns:
        fp32 [n - 1]: -log p(token[i + 1] | tokens[: i + 1]).
    """
    ids = torch.as_tensor(token_ids, dtype=torch.long)
    lp = torch.log_softmax(logits[:-1].float(), dim=-1)
    return -lp.gather(1, ids[1:, None]).squeeze(1)


def perplexity(nll: torch.Tensor) -> float:
    """exp(mean NLL) over all scored tokens (fp32 [N] -> float)."""
    return math.exp(float(nll.double().mean()))

"""Divergence of a candidate from the reference, the way llama.cpp's perplexity tool reports
it: per-token KL(reference || candidate), top-1 agreement, and the perplexity of both."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from infer.eval.perplexity import perplexity


def token_kl(cand_logits: torch.Tensor, ref: dict[str, torch.Tensor]) -> torch.Tensor:
    """KL(P_ref || P_cand) per scored position.

    Args:
        cand_logits: fp32 [n, vocab] candidate logits of the window (last row unused).
        ref: a ``ReferenceStore`` record (full ``logprobs`` or top-k ``top_lp``/``top_ids``).
    Returns:
        fp32 [n - 1] KL in nats (>= 0 up to rounding).
    """
    logq = torch.log_softmax(cand_logits[:-1].float(), dim=-1)
    if "logprobs" in ref:
        logp = ref["logprobs"].float()
        logp = logp - torch.logsumexp(logp, dim=-1, keepdim=True)  # undo fp16 rounding of the mass
        return (logp.exp() * (logp - logq)).sum(-1).clamp_min(0.0)
    # top-k: the k reference tokens plus one bucket holding the rest of the vocabulary
    lp_k = ref["top_lp"].float()
    lq_k = logq.gather(1, ref["top_ids"].long())
    p_k = lp_k.exp()
    head = (p_k * (lp_k - lq_k)).sum(-1)
    p_t = (1.0 - p_k.sum(-1)).clamp_min(0.0)
    q_t = (1.0 - lq_k.exp().sum(-1)).clamp_min(1e-30)
    tail = torch.where(p_t > 0, p_t * (p_t.clamp_min(1e-30).log() - q_t.log()), torch.zeros_like(p_t))
    return (head + tail).clamp_min(0.0)


@dataclass
class DivergenceAccumulator:
    """Collects per-token statistics window by window (all tensors fp32/bool [tokens])."""

    kl: list[torch.Tensor] = field(default_factory=list)
    top1: list[torch.Tensor] = field(default_factory=list)
    nll: list[torch.Tensor] = field(default_factory=list)
    nll_ref: list[torch.Tensor] = field(default_factory=list)

    def add(self, cand_logits: torch.Tensor, cand_nll: torch.Tensor, ref: dict[str, torch.Tensor]) -> None:
        """Add one window: candidate logits [n, vocab], candidate NLL [n-1], its reference record."""
        self.kl.append(token_kl(cand_logits, ref))
        self.top1.append(cand_logits[:-1].argmax(-1) == ref["top1"].long())
        self.nll.append(cand_nll.float())
        self.nll_ref.append(ref["nll"].float())

    def summary(self) -> dict[str, float]:
        """kl_mean/median/p99/max, top1_agree, ppl, ppl_ref, delta_ppl (ppl - ppl_ref),
        delta_ppl_pct, ln_ppl_ratio (mean log PPL(cand)/PPL(ref))."""
        kl = torch.cat(self.kl).double()
        nll, nll_ref = torch.cat(self.nll).double(), torch.cat(self.nll_ref).double()
        ppl, ppl_ref = perplexity(nll), perplexity(nll_ref)
        return {
            "kl_mean": float(kl.mean()),
            "kl_median": float(kl.median()),
            "kl_p99": float(torch.quantile(kl, 0.99)),
            "kl_max": float(kl.max()),
            "top1_agree": float(torch.cat(self.top1).double().mean()),
            "ppl_ref": ppl_ref,
            "delta_ppl": ppl - ppl_ref,
            "delta_ppl_pct": 100.0 * (ppl - ppl_ref) / ppl_ref,
            "ln_ppl_ratio": float((nll - nll_ref).mean()) if math.isfinite(ppl) else math.inf,
        }

"""Batched sampler: penalties, temperature, top-k/top-p/min-p, per-request seeded draws.

Randomness comes from each request's own torch.Generator (exponential-race sampling:
argmax(p / E) with E ~ Exp(1) equals a draw from p), so a seeded request samples the same
tokens whatever else shares its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from infer.sampling_params import SamplingParams
from infer.sequence import Logprob, Sequence

# re-exported for the public API
__all__ = ["SamplingParams", "Sampler", "SamplerOutput"]


@dataclass
class SamplerOutput:
    """token_ids: one per row; logprobs: per row a {token: Logprob} dict or None."""

    token_ids: list[int]
    logprobs: list[dict[int, Logprob] | None]


def apply_penalties(logits: torch.Tensor, seqs: list[Sequence], vocab: int) -> torch.Tensor:
    """Repetition (prompt+output, HF/vLLM style), presence and frequency (output) penalties."""
    b = logits.shape[0]
    dev = logits.device
    out_counts = torch.zeros(b, vocab, device=dev)
    seen = torch.zeros(b, vocab, dtype=torch.bool, device=dev)
    for i, s in enumerate(seqs):
        if s.output_token_ids:
            ids = torch.tensor(s.output_token_ids, device=dev)
            out_counts[i].scatter_add_(0, ids, torch.ones(len(ids), device=dev))
        if s.params.repetition_penalty != 1.0:
            seen[i, torch.tensor(s.tokens, device=dev)] = True
    rep = torch.tensor([s.params.repetition_penalty for s in seqs], device=dev)[:, None]
    pres = torch.tensor([s.params.presence_penalty for s in seqs], device=dev)[:, None]
    freq = torch.tensor([s.params.frequency_penalty for s in seqs], device=dev)[:, None]
    penalized = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen, penalized, logits)
    return logits - freq * out_counts - pres * (out_counts > 0).float()


def top_k_top_p_min_p(
    logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor
) -> torch.Tensor:
    """Mask logits [B, V] outside each row's top-k / nucleus top-p / min-p set with -inf.

    top_k: int [B] (V = off), top_p: float [B] (1 = off), min_p: float [B] (0 = off).
    """
    sorted_logits, idx = logits.sort(dim=-1, descending=True)
    v = logits.shape[-1]
    ranks = torch.arange(v, device=logits.device)[None, :]
    mask = ranks >= top_k[:, None]
    probs = sorted_logits.softmax(-1)
    # keep a token if the mass strictly before it is < top_p (always keeps the first)
    mask |= (probs.cumsum(-1) - probs) >= top_p[:, None]
    mask |= probs < (min_p[:, None] * probs[:, :1])
    sorted_logits = sorted_logits.masked_fill(mask, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, idx, sorted_logits)


class Sampler:
    """Turns last-position logits into next tokens for a batch of sequences."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> SamplerOutput:
        """logits: float32 [B, V] raw model logits, one row per sequence in ``seqs``."""
        logits = logits.float()
        raw = logits
        params = [s.params for s in seqs]
        if any(p.uses_penalties for p in params):
            logits = apply_penalties(logits, seqs, logits.shape[-1])
        for i, s in enumerate(seqs):
            # min_tokens: EOS and stop ids are banned until the minimum is reached
            if s.params.min_tokens and len(s.output_token_ids) < s.params.min_tokens:
                banned = list(s.params.stop_token_ids) + list(s.eos_token_ids)
                if banned:
                    logits[i, banned] = float("-inf")
        greedy = all(p.greedy for p in params)
        if greedy:
            tokens = logits.argmax(-1)
        else:
            tokens = self._sample(logits, params, seqs)
        token_list = tokens.tolist()
        lps = self._logprobs(raw, token_list, params)
        return SamplerOutput(token_list, lps)

    def _sample(
        self, logits: torch.Tensor, params: list[SamplingParams], seqs: list[Sequence]
    ) -> torch.Tensor:
        dev = logits.device
        v = logits.shape[-1]
        temp = torch.tensor([p.temperature if p.temperature > 0 else 1.0 for p in params], device=dev)
        scaled = logits / temp[:, None]
        if any(p.top_k > 0 or p.top_p < 1.0 or p.min_p > 0 for p in params):
            top_k = torch.tensor([p.top_k if p.top_k > 0 else v for p in params], device=dev)
            top_p = torch.tensor([p.top_p for p in params], device=dev)
            min_p = torch.tensor([p.min_p for p in params], device=dev)
            scaled = top_k_top_p_min_p(scaled, top_k, top_p, min_p)
        probs = scaled.softmax(-1)
        noise = torch.empty_like(probs)
        for i, s in enumerate(seqs):
            noise[i].exponential_(generator=s.generator)
        sampled = (probs / noise).argmax(-1)
        greedy_rows = torch.tensor([p.greedy for p in params], device=dev)
        return torch.where(greedy_rows, logits.argmax(-1), sampled)

    @staticmethod
    def _logprobs(
        raw: torch.Tensor, tokens: list[int], params: list[SamplingParams]
    ) -> list[dict[int, Logprob] | None]:
        out: list[dict[int, Logprob] | None] = [None] * len(tokens)
        rows = [i for i, p in enumerate(params) if p.logprobs is not None]
        if not rows:
            return out
        lp = raw[rows].log_softmax(-1)
        for j, i in enumerate(rows):
            out[i] = logprob_dict(lp[j], tokens[i], params[i].logprobs or 0)
        return out


def logprob_dict(lp_row: torch.Tensor, token: int, k: int) -> dict[int, Logprob]:
    """The chosen token's logprob and rank plus the top-k alternatives. lp_row: [V]."""
    chosen = lp_row[token]
    rank = int((lp_row > chosen).sum().item()) + 1
    d = {token: Logprob(float(chosen), rank)}
    if k > 0:
        vals, ids = lp_row.topk(k)
        for r, (val, tid) in enumerate(zip(vals.tolist(), ids.tolist())):
            d.setdefault(tid, Logprob(val, r + 1))
    return d

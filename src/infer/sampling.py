"""Batched sampler, split in two: ``process`` turns raw logits rows into each row's processed
distribution (penalties, min_tokens bans, temperature, top-k -> top-p -> min-p), ``draw``
picks a token from it with the row's own generator.

Verification of speculative drafts uses the same ``process`` on every verified position, with
the history that position sees (committed output plus the drafts accepted before it), so the
target distribution is exactly the one plain decoding would sample from.

Randomness comes from each request's own torch.Generator (exponential race: argmax(p / E)
with E ~ Exp(1) is a draw from p), so a seeded request samples the same tokens whatever else
shares its batch. Rows that ask for no truncation are never touched by the truncation mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from infer.layers import cpu_ops
from infer.sampling_params import SamplingParams
from infer.sequence import Logprob, Sequence
from infer.spec.verify import sample_from


def greedy_tokens(logits: torch.Tensor) -> list[int]:
    """``logits.argmax(-1).tolist()`` for fp32 [N, V] rows: the first index of each row's
    maximum (a NaN counts as the maximum). On CPU the C++ ``argmax_rows`` gives the same
    indices as torch (tests/unit/test_cpu_model_ops.py) without torch's scalar reduction,
    which takes ~150 us per 49k-wide row; elsewhere torch's."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.dim() == 2 \
            and logits.shape[1] > 0 and logits.stride(1) == 1:
        mod = cpu_ops.load()
        if mod is not None:
            return mod.argmax_rows(logits).tolist()  # type: ignore[no-any-return]
    return logits.argmax(-1).tolist()  # type: ignore[no-any-return]


# re-exported for the public API
__all__ = ["Processed", "RowContext", "Sampler", "SamplerOutput", "SamplingParams", "sample_from"]


@dataclass
class SamplerOutput:
    """token_ids: one per row; logprobs: per row a {token: Logprob} dict or None."""

    token_ids: list[int]
    logprobs: list[dict[int, Logprob] | None]


@dataclass
class RowContext:
    """What the processors of one logits row see: its sequence and the output tokens that
    precede the row's position (committed output, then any drafts accepted before it)."""

    seq: Sequence
    output_ids: list[int]

    @staticmethod
    def of(seq: Sequence) -> RowContext:
        return RowContext(seq, seq.output_token_ids)


@dataclass
class Processed:
    """Rows after processing. logits: fp32 [N, V] penalised/banned logits (greedy rows take
    their argmax); probs: fp32 [N, V] the distribution each sampled row draws from (greedy
    rows hold a copy of softmax(logits), unused), or None when every row is greedy;
    greedy: per row."""

    logits: torch.Tensor
    probs: torch.Tensor | None
    greedy: list[bool]


def apply_penalties(logits: torch.Tensor, rows: list[RowContext]) -> torch.Tensor:
    """Repetition (prompt + output, HF/vLLM style), presence and frequency (output) penalties."""
    b, vocab = logits.shape
    dev = logits.device
    out_counts = torch.zeros(b, vocab, device=dev)
    seen = torch.zeros(b, vocab, dtype=torch.bool, device=dev)
    for i, r in enumerate(rows):
        if r.output_ids:
            ids = torch.tensor(r.output_ids, device=dev)
            out_counts[i].scatter_add_(0, ids, torch.ones(len(ids), device=dev))
        if r.seq.params.repetition_penalty != 1.0:
            seen[i, torch.tensor(r.seq.prompt_token_ids + list(r.output_ids), device=dev)] = True
    params = [r.seq.params for r in rows]
    rep = torch.tensor([p.repetition_penalty for p in params], device=dev)[:, None]
    pres = torch.tensor([p.presence_penalty for p in params], device=dev)[:, None]
    freq = torch.tensor([p.frequency_penalty for p in params], device=dev)[:, None]
    penalized = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen, penalized, logits)
    return logits - freq * out_counts - pres * (out_counts > 0).float()


def top_k_top_p_min_p(
    logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor
) -> torch.Tensor:
    """Mask logits [B, V] outside each row's top-k, then nucleus top-p of the distribution
    renormalised after top-k, then min-p, with -inf.

    top_k: int [B] (V = off), top_p: float [B] (1 = off), min_p: float [B] (0 = off). A row
    with top_p == 1 gets no top-p mask at all: the fp32 cumulative sum can reach 1.0 before
    the tail and would otherwise cut it.
    """
    sorted_logits, idx = logits.sort(dim=-1, descending=True)
    v = logits.shape[-1]
    ranks = torch.arange(v, device=logits.device)[None, :]
    sorted_logits = sorted_logits.masked_fill(ranks >= top_k[:, None], float("-inf"))
    probs = sorted_logits.softmax(-1)
    # keep a token if the mass strictly before it is < top_p (always keeps the first)
    mask = ((probs.cumsum(-1) - probs) >= top_p[:, None]) & (top_p < 1.0)[:, None]
    # min-p is a ratio to the top probability, so renormalisation does not change it
    mask |= probs < (min_p[:, None] * probs[:, :1])
    sorted_logits = sorted_logits.masked_fill(mask, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, idx, sorted_logits)


class Sampler:
    """Turns logits rows into processed distributions and draws tokens from them."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def process(self, logits: torch.Tensor, rows: list[RowContext]) -> Processed:
        """logits: raw model logits [N, V] (any float dtype), one row per ``rows`` entry."""
        logits = logits.float()
        params = [r.seq.params for r in rows]
        if any(p.uses_penalties for p in params):
            logits = apply_penalties(logits, rows)
        elif any(r.seq.params.min_tokens for r in rows):
            logits = logits.clone()  # the bans below write in place; raw logits stay intact
        for i, r in enumerate(rows):
            # min_tokens: EOS and stop ids are banned until the minimum is reached
            p = r.seq.params
            if p.min_tokens and len(r.output_ids) < p.min_tokens:
                banned = list(p.stop_token_ids) + list(r.seq.eos_token_ids)
                if banned:
                    logits[i, banned] = float("-inf")
        greedy = [p.greedy for p in params]
        if all(greedy):
            return Processed(logits, None, greedy)
        dev = logits.device
        v = logits.shape[-1]
        temp = torch.tensor([1.0 if g else p.temperature for p, g in zip(params, greedy)], device=dev)
        scaled = logits / temp[:, None]
        trunc = [i for i, p in enumerate(params) if p.truncates and not greedy[i]]
        if trunc:
            sel = [params[i] for i in trunc]
            top_k = torch.tensor([p.top_k if p.top_k > 0 else v for p in sel], device=dev)
            top_p = torch.tensor([p.top_p for p in sel], device=dev)
            min_p = torch.tensor([p.min_p for p in sel], device=dev)
            ti = torch.tensor(trunc, device=dev)
            scaled[ti] = top_k_top_p_min_p(scaled[ti], top_k, top_p, min_p)
        return Processed(logits, scaled.softmax(-1), greedy)

    @staticmethod
    def draw(proc: Processed, row: int, generator: torch.Generator | None) -> int:
        """The token of one row: argmax for greedy rows, a seeded draw otherwise."""
        if proc.greedy[row] or proc.probs is None:
            return greedy_tokens(proc.logits[row : row + 1])[0]
        return sample_from(proc.probs[row], generator)

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> SamplerOutput:
        """Plain sampling: one next token per sequence. logits: [B, V] last-position rows."""
        proc = self.process(logits, [RowContext.of(s) for s in seqs])
        if all(proc.greedy):
            tokens = greedy_tokens(proc.logits)
        else:
            tokens = [self.draw(proc, i, s.generator) for i, s in enumerate(seqs)]
        params = [s.params for s in seqs]
        return SamplerOutput(tokens, self.logprobs(logits.float(), tokens, params))

    @staticmethod
    def logprobs(
        raw: torch.Tensor, tokens: list[int], params: list[SamplingParams]
    ) -> list[dict[int, Logprob] | None]:
        """Per row, the chosen token's raw-model logprob plus the requested top alternatives
        (None for rows that asked for no logprobs). raw: fp32 [N, V]."""
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

"""Model-based proposers: a draft model (``spec=draft``) and self-speculation (``spec=self``).

Both run a second forward path in the same process with its own runner, attention backend
instance and paged KV cache (nothing mutable is shared with the target): a separate
checkpoint, the target's own checkpoint quantized by a quant method (``spec=self
spec.mode=quant``), or the target's own modules with some layers skipped (``spec=self
spec.mode=layers``; weights are shared read-only, KV is kept only for the layers it runs).

The draft mirrors every speculating sequence with a shadow sequence whose
``num_computed_tokens`` counts the prefix of ``seq.tokens`` whose KV the draft holds. Each
step it first catches up (feeds the tokens accepted since last time, in one batched chunk),
then drafts autoregressively, one batched forward per draft token. After verification the
shadow keeps only the KV of accepted tokens (rollback = ``trim``); preemption, finishing and
aborts free it. Drafts are drawn from the draft's processed distribution with the request's
own processors and generator (greedy rows take its argmax: a point mass).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from infer.cache.paged import PagedKVCacheManager
from infer.runner import ModelRunner
from infer.sampling import RowContext, Sampler
from infer.scheduler import ScheduledSeq
from infer.sequence import Sequence
from infer.spec.base import Draft
from infer.spec.verify import sample_from


@dataclass
class _Shadow:
    """The draft's view of one sequence: its tokens and how many have KV in the draft."""

    seq: Sequence  # a private Sequence (same seq_id) holding tokens + drafts so far
    base_len: int = 0  # len(seq.tokens) when the current draft started
    num_draft: int = 0  # tokens drafted in the current step


class DraftModelProposer:
    """Drafts ``k`` tokens per sequence with a second forward path.

    Args:
        num_tokens: most draft tokens per sequence per step (k).
        runner: the draft's runner (its model, backend instance and KV memory).
        cache: the draft's own block manager over that KV memory.
        sampler: processes draft logits with each request's own processors.
        name: label for logs.
    """

    def __init__(
        self, num_tokens: int, runner: ModelRunner, cache: PagedKVCacheManager, sampler: Sampler,
        name: str = "draft",
    ) -> None:
        if num_tokens < 1:
            raise ValueError(f"spec.num_tokens must be >= 1 for a draft model, got {num_tokens}")
        self.num_tokens = num_tokens
        self.runner = runner
        self.cache = cache
        self.sampler = sampler
        self.name = name
        self._shadows: dict[int, _Shadow] = {}

    def _shadow(self, seq: Sequence) -> _Shadow:
        sh = self._shadows.get(seq.seq_id)
        if sh is None:
            mirror = Sequence(
                seq_id=seq.seq_id, request_id=seq.request_id, prompt=None,
                prompt_token_ids=[], params=seq.params, arrival=seq.arrival,
            )
            sh = self._shadows[seq.seq_id] = _Shadow(mirror)
        sh.seq.prompt_token_ids = list(seq.tokens)
        sh.base_len = seq.num_tokens
        sh.num_draft = 0
        return sh

    @torch.inference_mode()
    def propose(self, seqs: list[Sequence], num_slots: list[int]) -> Draft:
        tokens: list[list[int]] = [[] for _ in seqs]
        q_rows: list[list[torch.Tensor]] = [[] for _ in seqs]
        # round 0 catches up on every token the draft has not seen; later rounds feed one
        active: list[tuple[int, _Shadow, int]] = []
        for i, (seq, k) in enumerate(zip(seqs, num_slots)):
            if k <= 0:
                continue
            sh = self._shadow(seq)
            n = sh.seq.num_tokens - sh.seq.num_computed_tokens
            if n < 1 or not self.cache.allocate(sh.seq, n):
                self.free(seq)  # no room in the draft's KV: this sequence skips drafting
                continue
            active.append((i, sh, n))
        while active:
            batch = [ScheduledSeq(sh.seq, n) for _, sh, n in active]
            last, at = [], 0
            for _, _, n in active:
                at += n
                last.append(at - 1)
            logits = self.runner.execute(batch, [self.cache.block_table(sh.seq) for _, sh, _ in active], last)
            for _, sh, n in active:
                sh.seq.num_computed_tokens += n
            ctxs = [RowContext(seqs[i], seqs[i].output_token_ids + tokens[i]) for i, _, _ in active]
            proc = self.sampler.process(logits, ctxs)
            nxt: list[tuple[int, _Shadow, int]] = []
            for j, (i, sh, _) in enumerate(active):
                if proc.greedy[j] or proc.probs is None:
                    tok = int(proc.logits[j].argmax())
                else:
                    tok = sample_from(proc.probs[j], seqs[i].generator)
                    q_rows[i].append(proc.probs[j])
                tokens[i].append(tok)
                sh.num_draft += 1
                if len(tokens[i]) < num_slots[i]:
                    sh.seq.prompt_token_ids.append(tok)
                    if self.cache.allocate(sh.seq, 1):
                        nxt.append((i, sh, 1))
            active = nxt
        probs: list[torch.Tensor | None] = [torch.stack(r) if r else None for r in q_rows]
        return Draft(tokens, probs if any(p is not None for p in probs) else None)

    def commit(self, seqs: list[Sequence], num_accepted: list[int]) -> None:
        """Keep the KV of accepted drafts only. The draft fed all but its last token, so after
        accepting ``a`` of ``d`` drafts it holds valid KV for ``base + min(a, d - 1)`` tokens."""
        for seq, a in zip(seqs, num_accepted):
            sh = self._shadows.get(seq.seq_id)
            if sh is None or sh.num_draft == 0:
                continue
            sh.seq.num_computed_tokens = min(
                sh.seq.num_computed_tokens, sh.base_len + min(a, sh.num_draft - 1)
            )
            self.cache.trim(sh.seq)
            sh.num_draft = 0

    def free(self, seq: Sequence) -> None:
        sh = self._shadows.pop(seq.seq_id, None)
        if sh is not None:
            self.cache.free(sh.seq)

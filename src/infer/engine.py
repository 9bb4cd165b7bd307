"""The one generation loop: schedule -> propose -> execute -> verify/sample -> commit.

Plain decoding is the k=0 case: ``NoProposer`` drafts nothing, every decoding sequence feeds
its one pending token, and verification of an empty draft is exactly sampling. Cache
policies, attention backends, quantization, kernels and proposers are plugged in by ``build``.

A step never leaves half-applied state behind: nothing advances before the forward has run,
and a failure that belongs to one request (its logprobs, its sampling parameters, its
stop checks) finishes that request with ``finish_reason="error"`` while the others go on.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from infer.engine_outputs import build_request_output
from infer.outputs import RequestOutput
from infer.runner import ModelRunner
from infer.sampling import Processed, RowContext, Sampler, greedy_tokens, logprob_dict
from infer.sampling_params import MAX_SEED, SamplingParams
from infer.scheduler import ScheduledSeq, Scheduler
from infer.sequence import SeqStatus, Sequence
from infer.spec.base import Proposer
from infer.spec.verify import verify_greedy, verify_rejection
from infer.stopping import decode_output, finish_reason_after


@dataclass
class EngineStats:
    """Counters over the engine's lifetime (reset by ``reset_stats``).

    spec_drafted / spec_accepted: draft tokens proposed / accepted; spec_steps: per-sequence
    verify steps that carried at least one draft; draft_time / verify_time: seconds spent in
    the proposer / in the target forward plus verification."""

    steps: int = 0
    prompt_tokens: int = 0
    computed_prompt_tokens: int = 0
    output_tokens: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    kv_usage: list[float] = field(default_factory=list)
    spec_drafted: int = 0
    spec_accepted: int = 0
    spec_steps: int = 0
    draft_time: float = 0.0
    verify_time: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.spec_accepted / self.spec_drafted if self.spec_drafted else 0.0

    @property
    def acceptance_length(self) -> float:
        """Mean tokens gained per verify step that had drafts (1 + accepted / steps)."""
        return 1.0 + self.spec_accepted / self.spec_steps if self.spec_steps else 1.0


@dataclass
class _Rows:
    """Where one scheduled sequence's logit rows sit in the step's logits."""

    sample: tuple[int, int] | None  # (first row, count = 1 + len(draft)) when it samples
    prompt: tuple[int, int] | None  # rows scoring its prompt chunk (prompt_logprobs)
    packed: list[int]  # the packed-token positions of those rows, in row order


class Engine:
    """Continuous-batching engine over one model."""

    def __init__(
        self,
        runner: ModelRunner,
        scheduler: Scheduler,
        sampler: Sampler,
        tokenizer: Any,
        proposer: Proposer,
        max_model_len: int,
        vocab_size: int,
        eos_token_ids: list[int],
        seed: int = 0,
        policy: Any = None,
        model_path: Path | None = None,
        config: Any = None,
    ) -> None:
        self.runner = runner
        self.scheduler = scheduler
        self.sampler = sampler
        self.tokenizer = tokenizer
        self.proposer = proposer
        self.policy = policy
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self._seed_rng = torch.Generator().manual_seed(seed)
        self._ids = itertools.count()
        self._requests: dict[str, list[Sequence]] = {}
        self.stats = EngineStats()
        self.model_path = model_path  # the checkpoint folder served
        self.config = config  # the composed config it was built from (None when hand-built)
        scheduler.draft_slots = self._draft_slots
        scheduler.on_preempt = self._forget  # type: ignore[method-assign]

    def _draft_slots(self, seqs: list[Sequence], batch_size: int) -> list[int]:
        """Draft slots per decoding sequence. Seeded sampled requests always get the full k:
        their random stream must not depend on what else is in the batch (the adaptive
        policy looks at the batch)."""
        k = int(getattr(self.proposer, "num_tokens", 0))
        if k == 0:
            return [0] * len(seqs)
        if self.policy is None:
            return [k] * len(seqs)
        slots = list(self.policy.num_slots(seqs, batch_size))
        return [k if s.params.seeded_sampling else n for s, n in zip(seqs, slots)]

    def _forget(self, seq: Sequence) -> None:
        """seq finished, was aborted or preempted: the proposer and policy drop its state."""
        self.proposer.free(seq)
        if self.policy is not None and hasattr(self.policy, "free"):
            self.policy.free(seq)

    def reset_stats(self) -> None:
        self.stats = EngineStats()

    # ---- admission -------------------------------------------------------------------
    def validate_prompt(self, prompt_token_ids: list[int]) -> None:
        """Raise ValueError if the prompt cannot be served."""
        if len(prompt_token_ids) == 0:
            raise ValueError("empty prompt: a request needs at least one prompt token")
        bad = [t for t in prompt_token_ids if not (0 <= int(t) < self.vocab_size)]
        if bad:
            raise ValueError(
                f"prompt token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})"
            )
        if len(prompt_token_ids) >= self.max_model_len:
            raise ValueError(
                f"prompt has {len(prompt_token_ids)} tokens but max_model_len is "
                f"{self.max_model_len}; it must be shorter to leave room for output"
            )
        s = self.scheduler
        if not s.chunked_prefill and len(prompt_token_ids) > s.max_num_batched_tokens:
            raise ValueError(
                f"prompt has {len(prompt_token_ids)} tokens but engine.chunked_prefill=false and "
                f"engine.max_num_batched_tokens={s.max_num_batched_tokens}: without chunking a "
                "prompt must fit one step; enable chunked_prefill or raise max_num_batched_tokens"
            )

    def validate_params(self, params: SamplingParams) -> None:
        """Checks that need the model (vocabulary) or the tokenizer; raises ValueError."""
        params.validate()
        v = self.vocab_size
        for name in ("logprobs", "prompt_logprobs"):
            n = getattr(params, name)
            if n is not None and n > v:
                raise ValueError(f"SamplingParams.{name}={n} is invalid; allowed: None or 0..{v} (the vocabulary size)")
        bad = [t for t in params.stop_token_ids if t >= v]
        if bad:
            raise ValueError(
                f"SamplingParams.stop_token_ids={bad[:5]} are outside the vocabulary; allowed: ids in [0, {v})"
            )
        if params.stop and self.tokenizer is None:
            raise ValueError("SamplingParams.stop needs a tokenizer; this engine has none (skip_tokenizer_init)")

    def add_request(
        self,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str | None = None,
    ) -> str:
        """Queue a request (``params.n`` sequences). Raises ValueError on bad input, leaving
        the engine and other requests untouched (nothing is queued unless all of it is)."""
        self.validate_params(params)
        self.validate_prompt(prompt_token_ids)
        rid = request_id if request_id is not None else f"req-{next(self._ids)}"
        if rid in self._requests:
            raise ValueError(f"duplicate request_id {rid!r}")
        now = time.perf_counter()
        seqs = []
        for i in range(params.n):
            g = torch.Generator(device=self.runner.device)
            if params.seed is not None:
                g.manual_seed((params.seed + i) % (MAX_SEED + 1))
            else:
                g.manual_seed(int(torch.randint(0, 2**62, (1,), generator=self._seed_rng)))
            seqs.append(Sequence(
                seq_id=next(self._ids), request_id=rid, prompt=prompt,
                prompt_token_ids=[int(t) for t in prompt_token_ids], params=params,
                arrival=now, generator=g, eos_token_ids=list(self.eos_token_ids),
            ))
        for seq in seqs:
            self.scheduler.add(seq)
        self._requests[rid] = seqs
        self.stats.prompt_tokens += len(prompt_token_ids) * params.n
        return rid

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request, free everything it holds, and return its final output
        (``finish_reason="abort"`` for the samples that had not finished); None if unknown."""
        seqs = self._requests.get(request_id)
        if seqs is None:
            return None
        for s in seqs:
            if not s.is_finished:
                s.finish_reason = "abort"
                self._finish(s)
        return self._request_output(request_id)

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    # ---- the loop ----------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one iteration; returns the current output of every request it advanced."""
        batch = self.scheduler.schedule()
        if not batch:
            return self._fail_unschedulable()
        t0 = time.perf_counter()
        self._propose(batch)
        t1 = time.perf_counter()
        rows = self._logit_rows(batch)
        flat = [p for x in rows for p in x.packed]
        tables = [self.scheduler.cache.block_table(b.seq) for b in batch]
        touched: dict[str, None] = {b.seq.request_id: None for b in batch}
        try:
            logits = self.runner.execute(batch, tables, flat)
        except Exception as e:  # noqa: BLE001 (nothing advanced: the batch fails, the engine goes on)
            for b in batch:
                self._fail(b.seq, e)
            return [self._request_output(r) for r in touched]
        self.stats.steps += 1
        self.stats.batch_sizes.append(len(batch))
        self.stats.kv_usage.append(self.scheduler.cache.usage())

        accepted = self.runner.agree(self._verify(batch, rows, logits))
        self.stats.verify_time += time.perf_counter() - t1
        self.stats.draft_time += t1 - t0
        self._commit(batch, rows, logits, accepted)
        return [self._request_output(r) for r in touched if r in self._requests]

    def _propose(self, batch: list[ScheduledSeq]) -> None:
        """Fill the reserved draft slots (the proposer may return fewer tokens)."""
        spec = [b for b in batch if b.num_slots > 0]
        if not spec:
            return
        draft = self.proposer.propose([b.seq for b in spec], [b.num_slots for b in spec])
        for i, b in enumerate(spec):
            toks = [int(t) for t in draft.tokens[i][: b.num_slots]]
            b.draft = toks
            probs = draft.probs_of(i)
            b.draft_probs = None if probs is None else probs[: len(toks)]

    def _logit_rows(self, batch: list[ScheduledSeq]) -> list[_Rows]:
        """Which packed-token rows need logits, per scheduled sequence: every prompt row of
        the chunk for prompt_logprobs requests, and, when the chunk completes, the row of its
        last committed token plus one row per draft token (the verified positions)."""
        out: list[_Rows] = []
        flat = 0  # packed position of b's first fed token
        n = 0  # logits rows assigned so far
        for b in batch:
            s = b.seq
            packed: list[int] = []
            prompt = sample = None
            if (
                s.params.prompt_logprobs is not None
                and s.num_computed_tokens < s.num_prompt_tokens
                and len(s.prompt_logprobs) < s.num_prompt_tokens
            ):
                packed = list(range(flat, flat + b.num_new))
                prompt = (n, b.num_new)
                if b.completes:  # the chunk's last prompt row is also the sample row
                    packed += range(flat + b.num_new, flat + b.num_fed)
                    sample = (n + b.num_new - 1, 1 + len(b.draft))
            elif b.completes:
                packed = list(range(flat + b.num_new - 1, flat + b.num_fed))
                sample = (n, len(packed))
            n += len(packed)
            out.append(_Rows(sample, prompt, packed))
            flat += b.num_fed
        return out

    def _verify(
        self, batch: list[ScheduledSeq], rows: list[_Rows], logits: torch.Tensor
    ) -> dict[int, list[int] | Exception]:
        """Accepted tokens (drafts accepted + one bonus/correction token) per sequence id,
        or the exception that sequence's verification raised."""
        items = [(b, r.sample) for b, r in zip(batch, rows) if r.sample is not None]
        if not items:
            return {}
        try:
            return self._verify_items(items, logits)
        except Exception:  # noqa: BLE001 (find the culprit: verify each sequence alone)
            out: dict[int, list[int] | Exception] = {}
            for it in items:
                try:
                    out.update(self._verify_items([it], logits))
                except Exception as e:  # noqa: BLE001 (this sequence's failure is its own)
                    out[it[0].seq.seq_id] = e
            return out

    def _verify_items(
        self, items: list[tuple[ScheduledSeq, tuple[int, int]]], logits: torch.Tensor
    ) -> dict[int, list[int] | Exception]:
        ctxs: list[RowContext] = []
        idx: list[int] = []
        for b, (r0, n) in items:
            out_ids = b.seq.output_token_ids
            for j in range(n):
                ctxs.append(RowContext(b.seq, out_ids + b.draft[:j] if j else out_ids))
            idx.extend(range(r0, r0 + n))
        sel = logits[idx] if len(idx) != logits.shape[0] else logits
        proc: Processed = self.sampler.process(sel, ctxs)
        argmax = greedy_tokens(proc.logits)
        res: dict[int, list[int] | Exception] = {}
        at = 0
        for b, (_, n) in items:
            if proc.greedy[at] or proc.probs is None:
                res[b.seq.seq_id] = verify_greedy(argmax[at : at + n], b.draft)
            else:
                res[b.seq.seq_id] = verify_rejection(
                    proc.probs[at : at + n], b.draft, b.draft_probs, b.seq.generator
                )
            at += n
        return res

    def _commit(
        self,
        batch: list[ScheduledSeq],
        rows: list[_Rows],
        logits: torch.Tensor,
        accepted: dict[int, list[int] | Exception],
    ) -> None:
        """Advance every sequence by what it computed and accepted; one sequence's failure
        finishes it alone."""
        now = time.perf_counter()
        cache = self.scheduler.cache
        spec_seqs: list[Sequence] = []
        spec_drafted: list[int] = []
        spec_acc: list[int] = []
        for b, r in zip(batch, rows):
            seq = b.seq
            try:
                if r.prompt is not None:
                    self._commit_prompt_logprobs(b, logits, r)
                if seq.num_computed_tokens < seq.num_prompt_tokens:
                    self.stats.computed_prompt_tokens += min(
                        b.num_new, seq.num_prompt_tokens - seq.num_computed_tokens
                    )
                seq.num_computed_tokens += b.num_new
                cache.on_tokens_computed(seq)
                if r.sample is None:
                    continue
                acc = accepted.get(seq.seq_id)
                if isinstance(acc, Exception) or acc is None:
                    raise acc or RuntimeError("no verification result")
                n_acc = self._append_run(seq, b, acc, logits, r.sample[0], now)
                if b.decode and self.proposer.num_tokens:  # the policy sees every decode
                    spec_seqs.append(seq)
                    spec_drafted.append(len(b.draft))
                    spec_acc.append(n_acc)
                if not seq.is_finished:
                    seq.num_computed_tokens += n_acc  # accepted drafts' KV is valid
                    cache.on_tokens_computed(seq)
                    cache.trim(seq)  # slots of rejected / unproposed drafts go back
            except Exception as e:  # noqa: BLE001 (one bad request fails alone)
                self._fail(seq, e)
        if spec_seqs:
            live = [(s, a) for s, a, d in zip(spec_seqs, spec_acc, spec_drafted) if d and not s.is_finished]
            if live:
                self.proposer.commit([s for s, _ in live], [a for _, a in live])
            if self.policy is not None:
                self.policy.update(spec_seqs, spec_drafted, spec_acc)

    def _append_run(
        self, seq: Sequence, b: ScheduledSeq, acc: list[int], logits: torch.Tensor, row0: int,
        now: float,
    ) -> int:
        """Append the accepted tokens one by one, stopping at the first that finishes seq.
        Returns how many draft tokens were accepted (len(acc) - 1)."""
        n_acc = len(acc) - 1
        if b.draft:
            seq.spec_drafted += len(b.draft)
            seq.spec_accepted += n_acc
            seq.spec_steps += 1
            self.stats.spec_drafted += len(b.draft)
            self.stats.spec_accepted += n_acc
            self.stats.spec_steps += 1
        lps = (
            self.sampler.logprobs(logits[row0 : row0 + len(acc)].float(), acc, [seq.params] * len(acc))
            if seq.params.logprobs is not None else [None] * len(acc)
        )
        for tok, lp in zip(acc, lps):
            self._append_token(seq, tok, lp, now)
            if seq.is_finished:
                break
        return n_acc

    def _commit_prompt_logprobs(self, b: ScheduledSeq, logits: torch.Tensor, r: _Rows) -> None:
        """Row j of the chunk (position p = start + j) predicts prompt token p + 1."""
        s = b.seq
        r0, n = r.prompt  # type: ignore[misc]
        if not s.prompt_logprobs:
            s.prompt_logprobs.append(None)  # the first prompt token has no prediction
        lp = logits[r0 : r0 + n].float().log_softmax(-1)
        start = s.num_computed_tokens
        for j in range(n):
            p = start + j + 1
            if p < len(s.prompt_logprobs):
                continue  # already scored before a preemption
            if p >= s.num_prompt_tokens:
                break
            s.prompt_logprobs.append(logprob_dict(lp[j], s.prompt_token_ids[p], s.params.prompt_logprobs or 0))

    def _append_token(self, seq: Sequence, tok: int, lp: Any, now: float) -> None:
        seq.output_token_ids.append(tok)
        if lp is not None:
            seq.logprobs.append(lp)
        if seq.first_token_time is None:
            seq.first_token_time = now
        seq.token_times.append(now)
        self.stats.output_tokens += 1
        reason = finish_reason_after(self.tokenizer, seq, tok, self.max_model_len)
        if reason is not None:
            seq.finish_reason = reason
            self._finish(seq)

    def _fail(self, seq: Sequence, err: BaseException) -> None:
        if seq.is_finished:
            return
        seq.finish_reason, seq.stop_reason = "error", repr(err)
        self._finish(seq)

    def _fail_unschedulable(self) -> list[RequestOutput]:
        """Nothing could be scheduled although work is queued: fail the head request with a
        clear error instead of wedging the engine (should not happen: every request that
        passed admission fits the cache alone)."""
        if not self.scheduler.has_work() or self.scheduler.running:
            return []
        seq = self.scheduler.waiting[0]
        self._fail(seq, RuntimeError(
            f"request {seq.request_id} needs {seq.num_tokens} KV slots that the cache "
            f"({self.scheduler.cache.num_blocks} blocks of {self.scheduler.cache.block_size}) cannot hold"
        ))
        return [self._request_output(seq.request_id)]

    def _finish(self, seq: Sequence) -> None:
        if seq.finish_reason == "error":
            seq.output_text = ""
        elif seq.stop_reason is None or not isinstance(seq.stop_reason, str):
            seq.output_text = decode_output(self.tokenizer, seq)
        seq.status = SeqStatus.FINISHED
        self.scheduler.finish(seq)
        self._forget(seq)

    def _request_output(self, rid: str) -> RequestOutput:
        seqs = self._requests[rid]
        out = build_request_output(rid, seqs)
        if out.finished:
            del self._requests[rid]
        return out


"""The one generation loop: schedule -> propose -> forward -> sample -> commit.

Plain decoding is the k=0 case (``NoProposer``); cache policies, attention backends,
quantization and kernels are all plugged in by ``build``.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from infer.outputs import CompletionOutput, RequestOutput
from infer.runner import ModelRunner
from infer.sampling import Sampler, logprob_dict
from infer.sampling_params import SamplingParams
from infer.scheduler import ScheduledSeq, Scheduler
from infer.sequence import Sequence, SeqStatus
from infer.spec.base import Proposer


@dataclass
class EngineStats:
    """Counters over the engine's lifetime (reset by ``reset_stats``)."""

    steps: int = 0
    prompt_tokens: int = 0
    computed_prompt_tokens: int = 0
    output_tokens: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    kv_usage: list[float] = field(default_factory=list)


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
    ) -> None:
        self.runner = runner
        self.scheduler = scheduler
        self.sampler = sampler
        self.tokenizer = tokenizer
        self.proposer = proposer
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self._seed_rng = torch.Generator().manual_seed(seed)
        self._ids = itertools.count()
        self._requests: dict[str, list[Sequence]] = {}
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

    def add_request(
        self,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str | None = None,
    ) -> str:
        """Queue a request (``params.n`` sequences). Raises ValueError on bad input, leaving
        the engine and other requests untouched."""
        params.validate()
        self.validate_prompt(prompt_token_ids)
        rid = request_id if request_id is not None else f"req-{next(self._ids)}"
        if rid in self._requests:
            raise ValueError(f"duplicate request_id {rid!r}")
        now = time.perf_counter()
        seqs = []
        for i in range(params.n):
            g = torch.Generator(device=self.runner.device)
            if params.seed is not None:
                g.manual_seed(params.seed + i)
            else:
                g.manual_seed(int(torch.randint(0, 2**62, (1,), generator=self._seed_rng)))
            seq = Sequence(
                seq_id=next(self._ids), request_id=rid, prompt=prompt,
                prompt_token_ids=[int(t) for t in prompt_token_ids], params=params,
                arrival=now, generator=g, eos_token_ids=list(self.eos_token_ids),
            )
            seqs.append(seq)
            self.scheduler.add(seq)
        self._requests[rid] = seqs
        self.stats.prompt_tokens += len(prompt_token_ids) * params.n
        return rid

    def abort(self, request_id: str) -> None:
        """Drop a request and free its cache."""
        for s in self._requests.pop(request_id, []):
            self.scheduler.finish(s)

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    # ---- the loop ----------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one iteration; returns the current output of every request it advanced."""
        batch = self.scheduler.schedule()
        if not batch:
            if self.scheduler.has_work():
                raise RuntimeError("scheduler made no progress: KV cache too small for a request")
            return []
        self.proposer.propose([b.seq for b in batch], [0] * len(batch))
        rows, sample_idx, plp_rows = self._logit_rows(batch)
        tables = [self.scheduler.cache.block_table(b.seq) for b in batch]
        logits = self.runner.execute(batch, tables, rows)
        self.stats.steps += 1
        self.stats.batch_sizes.append(len(batch))
        self.stats.kv_usage.append(self.scheduler.cache.usage())

        for b, lp_rows in zip(batch, plp_rows):
            if lp_rows is not None:
                self._commit_prompt_logprobs(b, logits[lp_rows[0] : lp_rows[1]])
        done = [b for b in batch if b.completes]  # before num_computed_tokens advances
        for b in batch:
            if b.seq.num_computed_tokens < b.seq.num_prompt_tokens:
                self.stats.computed_prompt_tokens += min(
                    b.num_new, b.seq.num_prompt_tokens - b.seq.num_computed_tokens
                )
            b.seq.num_computed_tokens += b.num_new
            self.scheduler.cache.on_tokens_computed(b.seq)

        touched: dict[str, None] = {}
        if done:
            seqs = [b.seq for b in done]
            out = self.sampler(logits[sample_idx], seqs)
            now = time.perf_counter()
            for seq, tok, lp in zip(seqs, out.token_ids, out.logprobs):
                try:
                    self._append_token(seq, tok, lp, now)
                except Exception as e:  # one bad request fails alone
                    seq.finish_reason, seq.stop_reason = "error", repr(e)
                    self._finish(seq)
                touched[seq.request_id] = None
        return [self._request_output(r) for r in touched]

    def _logit_rows(
        self, batch: list[ScheduledSeq]
    ) -> tuple[list[int], list[int], list[tuple[int, int] | None]]:
        """Which packed-token rows need logits: the last row of completing chunks (sampling)
        and, for prompt_logprobs requests, every prompt row of the chunk."""
        rows: list[int] = []
        sample_idx: list[int] = []
        plp: list[tuple[int, int] | None] = []
        flat = 0
        for b in batch:
            s = b.seq
            want = (
                s.params.prompt_logprobs is not None
                and s.num_computed_tokens < s.num_prompt_tokens
                and len(s.prompt_logprobs) < s.num_prompt_tokens
            )
            if want:
                start = len(rows)
                rows.extend(range(flat, flat + b.num_new))
                plp.append((start, len(rows)))
                if b.completes:
                    sample_idx.append(len(rows) - 1)
            else:
                plp.append(None)
                if b.completes:
                    rows.append(flat + b.num_new - 1)
                    sample_idx.append(len(rows) - 1)
            flat += b.num_new
        return rows, sample_idx, plp

    def _commit_prompt_logprobs(self, b: ScheduledSeq, logits: torch.Tensor) -> None:
        """Row j (position p = start + j) predicts prompt token p + 1."""
        s = b.seq
        if not s.prompt_logprobs:
            s.prompt_logprobs.append(None)  # the first prompt token has no prediction
        lp = logits.log_softmax(-1)
        start = s.num_computed_tokens
        for j in range(b.num_new):
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
        p = seq.params
        n_out = len(seq.output_token_ids)
        if not p.ignore_eos and tok in seq.eos_token_ids and n_out >= p.min_tokens:
            seq.finish_reason = "stop"
        elif tok in p.stop_token_ids and n_out >= p.min_tokens:
            seq.finish_reason, seq.stop_reason = "stop", tok
        elif p.stop and n_out >= p.min_tokens and self._hit_stop_string(seq):
            seq.finish_reason = "stop"
        elif n_out >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            seq.finish_reason = "length"
        if seq.finish_reason is not None:
            self._finish(seq)

    def _hit_stop_string(self, seq: Sequence) -> bool:
        text = self._decode(seq)
        for s in seq.params.stop:  # type: ignore[union-attr]
            # only search the tail that the newest token could have completed
            idx = text.find(s, max(0, len(text) - len(s) - 16))
            if idx >= 0:
                keep = idx + len(s) if seq.params.include_stop_str_in_output else idx
                seq.output_text = text[:keep]
                seq.stop_reason = s
                return True
        return False

    def _decode(self, seq: Sequence) -> str:
        ids = seq.output_token_ids
        if ids and ids[-1] in seq.eos_token_ids and seq.finish_reason == "stop" and seq.stop_reason is None:
            ids = ids[:-1]
        return self.tokenizer.decode(ids, skip_special_tokens=seq.params.skip_special_tokens)

    def _finish(self, seq: Sequence) -> None:
        if seq.stop_reason is None or not isinstance(seq.stop_reason, str) or seq.finish_reason == "error":
            seq.output_text = self._decode(seq) if seq.finish_reason != "error" else ""
        seq.status = SeqStatus.FINISHED
        self.scheduler.finish(seq)

    def _request_output(self, rid: str) -> RequestOutput:
        seqs = self._requests[rid]
        finished = all(s.is_finished for s in seqs)
        if finished:
            del self._requests[rid]
        s0 = seqs[0]
        outs = []
        for i, s in enumerate(seqs):
            text = s.output_text if s.is_finished else ""
            cum = sum(d[t].logprob for d, t in zip(s.logprobs, s.output_token_ids)) if s.logprobs else None
            outs.append(CompletionOutput(
                i, text, list(s.output_token_ids), cum, s.logprobs or None, s.finish_reason, s.stop_reason
            ))
        err = next((str(s.stop_reason) for s in seqs if s.finish_reason == "error"), None)
        metrics: dict[str, float] = {"arrival": s0.arrival}
        if s0.first_token_time is not None:
            metrics["ttft"] = s0.first_token_time - s0.arrival
        if len(s0.token_times) > 1:
            metrics["tpot"] = (s0.token_times[-1] - s0.token_times[0]) / (len(s0.token_times) - 1)
        metrics["token_times"] = list(s0.token_times)  # type: ignore[assignment]
        metrics["num_cached_prompt_tokens"] = s0.num_cached_prompt_tokens
        return RequestOutput(
            rid, s0.prompt, s0.prompt_token_ids,
            s0.prompt_logprobs if s0.params.prompt_logprobs is not None else None,
            outs, finished, err, metrics,
        )

"""RequestOutput assembly: a request's samples, timings and speculation counters."""

from __future__ import annotations

from infer.outputs import CompletionOutput, RequestOutput
from infer.sequence import Sequence


def build_request_output(rid: str, seqs: list[Sequence]) -> RequestOutput:
    """The current output of the request made of ``seqs`` (its n samples).

    metrics: arrival, ttft, tpot, token_times, num_cached_prompt_tokens (first sample), and
    spec_drafted / spec_accepted / spec_steps / acceptance_rate / acceptance_length summed
    over the samples."""
    finished = all(s.is_finished for s in seqs)
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
    drafted = sum(s.spec_drafted for s in seqs)
    accepted = sum(s.spec_accepted for s in seqs)
    steps = sum(s.spec_steps for s in seqs)
    metrics["spec_drafted"] = drafted
    metrics["spec_accepted"] = accepted
    metrics["spec_steps"] = steps
    metrics["acceptance_rate"] = accepted / drafted if drafted else 0.0
    metrics["acceptance_length"] = 1.0 + accepted / steps if steps else 1.0
    return RequestOutput(
        rid, s0.prompt, s0.prompt_token_ids,
        s0.prompt_logprobs if s0.params.prompt_logprobs is not None else None,
        outs, finished, err, metrics,
    )

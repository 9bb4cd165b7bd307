"""Drive an engine through many independent requests (scoring or generation) to completion.

At most ``max_inflight`` requests are queued at once, so a task with 100k requests does not
hold 100k sequences' state; the engine's continuous batching fills its own batches from them.
"""

from __future__ import annotations

import itertools
from typing import Any

from infer.outputs import RequestOutput
from infer.sampling_params import SamplingParams


class EngineRunner:
    """Runs lists of ``(prompt_token_ids, SamplingParams)`` through ``engine`` (owned by the
    caller's thread) and returns their final outputs in order."""

    def __init__(self, engine: Any, max_inflight: int = 256) -> None:
        self.engine = engine
        self.max_inflight = max_inflight
        self._ids = itertools.count()

    def run(self, items: list[tuple[list[int], SamplingParams]], progress: bool = False,
            desc: str = "requests") -> list[RequestOutput]:
        bar = None
        if progress and len(items) > 1:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), desc=desc, dynamic_ncols=True)
        results: list[RequestOutput | None] = [None] * len(items)
        pending = iter(enumerate(items))
        live: dict[str, int] = {}
        done = 0
        while done < len(items):
            while len(live) < self.max_inflight:
                nxt = next(pending, None)
                if nxt is None:
                    break
                i, (ids, params) = nxt
                rid = f"lm-eval-{next(self._ids)}"
                self.engine.add_request(None, ids, params, request_id=rid)
                live[rid] = i
            for out in self.engine.step():
                if not out.finished or out.request_id not in live:
                    continue
                if out.error or any(c.finish_reason in ("error", "abort") for c in out.outputs):
                    raise RuntimeError(f"request {live[out.request_id]} failed in the engine: {out.error}")
                results[live.pop(out.request_id)] = out
                done += 1
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        return results  # type: ignore[return-value]

    def score(self, seqs: list[list[int]], n_scored: list[int], progress: bool = False) -> list[tuple[float, bool]]:
        """For each token sequence, the summed logprob of its last ``n`` tokens given the rest,
        and whether each of them was the argmax. Identical sequences run once."""
        uniq: dict[tuple[int, ...], int] = {}
        for s in seqs:
            uniq.setdefault(tuple(s), len(uniq))
        params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
        outs = self.run([(list(s), params) for s in uniq], progress, "loglikelihood")
        res = []
        for s, n in zip(seqs, n_scored):
            plp = outs[uniq[tuple(s)]].prompt_logprobs
            if plp is None or len(plp) < len(s):
                raise RuntimeError("the engine returned no prompt logprobs for a scoring request")
            total, greedy = 0.0, True
            for p in range(len(s) - n, len(s)):
                lp = plp[p][s[p]]  # type: ignore[index]
                total += lp.logprob
                greedy = greedy and lp.rank == 1
            res.append((total, greedy))
        return res

    def generate(self, jobs: list[tuple[list[int], list[str], int, float, dict[str, Any]]],
                 progress: bool = False) -> list[str]:
        """``jobs``: (prompt ids, stop strings, max new tokens, temperature, other kwargs
        (top_p, top_k, seed used)). Returns the generated texts (stop strings cut off)."""
        items = []
        for ids, until, max_gen, temp, kw in jobs:
            extra = {k: kw[k] for k in ("top_p", "top_k", "seed") if kw.get(k) is not None}
            items.append((ids, SamplingParams(temperature=temp, max_tokens=max_gen,
                                              stop=[u for u in until if u], **extra)))
        return [o.outputs[0].text for o in self.run(items, progress, "generate_until")]

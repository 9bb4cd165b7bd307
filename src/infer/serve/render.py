"""Turn the engine's cumulative RequestOutputs into OpenAI choice updates (engine thread).

Streaming needs text *deltas*, but the engine reports token ids while running and its final
text (stop strings cut off) only at the end. Each choice keeps the text it has sent; a delta
is the new decoded text minus a hold-back: a trailing partial UTF-8 character, and as many
characters as the longest stop string (a stop string may still be completing there). At the
end the engine's own text decides, so streamed and unstreamed texts are identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from infer.outputs import RequestOutput
from infer.sequence import Logprob


@dataclass
class ChoiceUpdate:
    """What one step adds to one choice. ``logprobs``: new entries in the endpoint's shape."""

    index: int
    text: str
    logprobs: list[Any] = field(default_factory=list)
    finish_reason: str | None = None
    num_tokens: int = 0


@dataclass
class _ChoiceState:
    sent_text: str = ""
    sent_tokens: int = 0
    text_offset: int = 0


class Renderer:
    """Per-request renderer; called with every output of the request, in order.

    Args:
        tokenizer: the engine's HF tokenizer (used on the engine thread only).
        n: choices per prompt. stream: compute deltas every step (else only at the end).
        logprobs: None, "completion" (legacy OpenAI shape) or "chat" (content entries).
        top_k: alternatives per token to report. echo: prefix the prompt (completions).
        stop: the request's stop strings (for the hold-back).
    """

    def __init__(self, tokenizer: Any, n: int, stream: bool, logprobs: str | None = None,
                 top_k: int = 0, echo: bool = False, prompt_text: str | None = None,
                 stop: list[str] | None = None, skip_special_tokens: bool = True) -> None:
        self.tok = tokenizer
        self.stream = stream
        self.kind = logprobs
        self.top_k = top_k
        self.echo = echo
        self.prompt_text = prompt_text
        self.hold = max((len(s) for s in stop or []), default=0)
        self.skip = skip_special_tokens
        self.states = [_ChoiceState() for _ in range(n)]
        self._echoed = False

    def __call__(self, out: RequestOutput) -> list[ChoiceUpdate]:
        if not self.stream and not out.finished:
            return []
        prefix, prefix_lp = "", [[] for _ in self.states]
        if self.echo and not self._echoed:
            self._echoed = True
            prefix = self.prompt_text if self.prompt_text is not None else self.tok.decode(out.prompt_token_ids)
            if self.kind is not None and out.prompt_logprobs is not None:
                prefix_lp = [self._prompt_entries(out, st) for st in self.states]
        ups = []
        for c, st in zip(out.outputs, self.states):
            ids = c.token_ids
            if out.finished:
                full = c.text
                delta = full[len(st.sent_text):]  # sent text is a prefix (held back above)
            else:
                text = self.tok.decode(ids, skip_special_tokens=self.skip)
                end = len(text) - self.hold
                if text.endswith("\ufffd"):
                    end = min(end, len(text.rstrip("\ufffd")))
                delta = text[len(st.sent_text):end] if end > len(st.sent_text) else ""
            lps = prefix_lp[c.index] + self._entries(c.logprobs, ids, st) if self.kind else []
            st.sent_text += delta
            new_tokens = len(ids) - st.sent_tokens
            st.sent_tokens = len(ids)
            ups.append(ChoiceUpdate(c.index, prefix + delta, lps,
                                    c.finish_reason if out.finished else None, new_tokens))
        return ups

    # ---- logprobs --------------------------------------------------------------------------
    def _entries(self, lps: list[dict[int, Logprob]] | None, ids: list[int], st: _ChoiceState) -> list[Any]:
        if not lps:
            return []
        return [self._entry(ids[i], lps[i], st) for i in range(st.sent_tokens, min(len(ids), len(lps)))]

    def _prompt_entries(self, out: RequestOutput, st: _ChoiceState) -> list[Any]:
        ents = []
        for i, tid in enumerate(out.prompt_token_ids):
            d = out.prompt_logprobs[i] if i < len(out.prompt_logprobs) else None
            ents.append(self._entry(tid, d, st))
        return ents

    def _entry(self, tid: int, d: dict[int, Logprob] | None, st: _ChoiceState) -> Any:
        text = self.tok.decode([tid])
        top = sorted(((t, lp) for t, lp in (d or {}).items() if lp.rank is not None and lp.rank <= self.top_k),
                     key=lambda x: x[1].rank)
        lp = d[tid].logprob if d is not None and tid in d else None
        if self.kind == "chat":
            return {"token": text, "logprob": lp, "bytes": list(text.encode()),
                    "top_logprobs": [{"token": (s := self.tok.decode([t])), "logprob": v.logprob,
                                      "bytes": list(s.encode())} for t, v in top]}
        ent = (text, lp, {self.tok.decode([t]): v.logprob for t, v in top} if d is not None else None,
               st.text_offset)
        st.text_offset += len(text)
        return ent


def completion_logprobs(entries: list[Any]) -> dict[str, Any] | None:
    """The legacy completions ``logprobs`` object from (token, logprob, top, offset) entries."""
    if not entries:
        return None
    return {"tokens": [e[0] for e in entries], "token_logprobs": [e[1] for e in entries],
            "top_logprobs": [e[2] for e in entries], "text_offset": [e[3] for e in entries]}

"""When a sequence stops, and its output text: EOS, stop ids, stop strings, length limits.

Kept apart from the loop so that the engine only asks "did this token finish seq?".
"""

from __future__ import annotations

from typing import Any

from infer.sequence import Sequence


def decode_output(tokenizer: Any, seq: Sequence) -> str:
    """The output text of seq (a final EOS that ended it is not rendered); "" without a
    tokenizer (token-ids-only mode)."""
    if tokenizer is None:
        return ""
    ids = seq.output_token_ids
    if ids and ids[-1] in seq.eos_token_ids and seq.finish_reason == "stop" and seq.stop_reason is None:
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=seq.params.skip_special_tokens)


def hit_stop_string(tokenizer: Any, seq: Sequence) -> bool:
    """Whether the newest token completed one of seq's stop strings; if so, set
    ``output_text`` (cut at the stop string, or after it with include_stop_str_in_output)
    and ``stop_reason``.

    Only text the newest token could have completed is searched: from where the previous
    text ended, minus len(stop) - 1 characters (a token may be arbitrarily long)."""
    text = decode_output(tokenizer, seq)
    prev = seq.stop_checked_len
    seq.stop_checked_len = len(text)
    for s in seq.params.stop:  # type: ignore[union-attr]
        idx = text.find(s, max(0, prev - len(s) + 1))
        if idx >= 0:
            keep = idx + len(s) if seq.params.include_stop_str_in_output else idx
            seq.output_text = text[:keep]
            seq.stop_reason = s
            return True
    return False


def finish_reason_after(tokenizer: Any, seq: Sequence, tok: int, max_model_len: int) -> str | None:
    """The finish reason once ``tok`` was appended to seq's output, or None to go on.
    Sets ``stop_reason`` (and ``output_text`` for stop strings) as a side effect."""
    p = seq.params
    n_out = len(seq.output_token_ids)
    if not p.ignore_eos and tok in seq.eos_token_ids and n_out >= p.min_tokens:
        return "stop"
    if tok in p.stop_token_ids and n_out >= p.min_tokens:
        seq.stop_reason = tok
        return "stop"
    if p.stop and n_out >= p.min_tokens and hit_stop_string(tokenizer, seq):
        return "stop"
    if n_out >= p.max_tokens or seq.num_tokens >= max_model_len:
        return "length"
    return None

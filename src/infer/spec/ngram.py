"""``spec=ngram``: prompt lookup. The sequence's own text is the draft model.

For each sequence, the longest suffix of ``seq.tokens`` (n from ``n_max`` down to ``n_min``)
that also occurs earlier is looked up, and the tokens that followed its most recent earlier
occurrence are proposed (point-mass drafts). When that continuation runs into the end of the
sequence it keeps copying from the draft itself, so a repeating pattern ``a b c a b c ...``
is extended for the full ``k`` tokens.

Index. Per ``seq_id`` a dict per n maps each n-gram (a tuple) to the start of its latest
occurrence that has a following token; it is extended incrementally with the tokens added
since the last call (O(n_max - n_min + 1) dict writes per token), so a lookup costs
O(n_max) whatever the length. Memory: at most (n_max - n_min + 1) entries per token of each
live sequence; ``free`` drops it.
"""

from __future__ import annotations

from dataclasses import dataclass

from infer.sequence import Sequence
from infer.spec.base import Draft


@dataclass
class _Index:
    """n-gram -> start of its latest occurrence, for every n-gram with a following token."""

    tables: dict[int, dict[tuple[int, ...], int]]
    length: int = 0  # tokens seen at the last update
    last: int = (
        -1
    )  # the token at position length-1 then (a cheap check that history was not rewritten)


class NgramProposer:
    """Prompt-lookup proposer (see module docstring).

    num_tokens: most draft tokens per sequence per step (k).
    n_min, n_max: shortest and longest suffix matched (1 <= n_min <= n_max).
    """

    def __init__(self, num_tokens: int, n_min: int = 2, n_max: int = 4) -> None:
        if int(num_tokens) < 0:
            raise ValueError(f"spec.num_tokens must be >= 0, got {num_tokens}")
        if not 1 <= int(n_min) <= int(n_max):
            raise ValueError(
                f"spec.proposer.n_min/n_max must satisfy 1 <= n_min <= n_max, got {n_min}, {n_max}"
            )
        self.num_tokens = int(num_tokens)
        self.n_min, self.n_max = int(n_min), int(n_max)
        self._index: dict[int, _Index] = {}

    # ---- Proposer protocol -----------------------------------------------------------------
    def propose(self, seqs: list[Sequence], num_slots: list[int]) -> Draft:
        """Up to ``num_slots[i]`` point-mass draft tokens per sequence (fewer, or none, when
        no suffix of length >= n_min occurred before)."""
        return Draft([self.propose_tokens(s.seq_id, s.tokens, k) for s, k in zip(seqs, num_slots)])

    def commit(self, seqs: list[Sequence], num_accepted: list[int]) -> None:
        """Nothing to do: the index catches up with the new tokens at the next ``propose``."""
        return

    def free(self, seq: Sequence) -> None:
        self._index.pop(seq.seq_id, None)

    # ---- core (token lists; usable without Sequence objects) -------------------------------
    def propose_tokens(self, key: int, tokens: list[int], k: int) -> list[int]:
        """Draft of at most ``k`` tokens continuing ``tokens`` (the index is kept under ``key``)."""
        k = min(int(k), self.num_tokens)
        if k <= 0 or len(tokens) < self.n_min + 1:
            return []
        idx = self._update(key, tokens)
        length = len(tokens)
        for n in range(min(self.n_max, length - 1), self.n_min - 1, -1):
            start = idx.tables[n].get(tuple(tokens[length - n :]))
            if start is None:
                continue
            out: list[int] = []
            src = start + n  # first token after the earlier occurrence (< length)
            for j in range(k):
                pos = src + j
                out.append(tokens[pos] if pos < length else out[pos - length])
            return out
        return []

    def _update(self, key: int, tokens: list[int]) -> _Index:
        """Index every n-gram that ends before the last token (so it has a continuation)."""
        idx = self._index.get(key)
        done = 0 if idx is None else idx.length
        # a reused key or a rewritten history (should not happen; be safe): rebuild
        if idx is None or done > len(tokens) or (done and idx.last != tokens[done - 1]):
            idx = _Index({n: {} for n in range(self.n_min, self.n_max + 1)})
            self._index[key] = idx
            done = 0
        # n-grams tokens[s:s+n] with s + n <= len(tokens) - 1, i.e. ending at e = s+n-1 <= L-2;
        # the ones ending at e in [done-1, L-2] are new (done-1 had no continuation last time)
        length = len(tokens)
        for n, table in idx.tables.items():
            lo, hi = max(done - n, 0), length - 1 - n  # starts of the new n-grams, inclusive
            if hi >= lo:
                # built in C by zip; later starts overwrite earlier ones (latest occurrence wins)
                grams = zip(*(tokens[lo + i : hi + 1 + i] for i in range(n)))
                table.update(zip(grams, range(lo, hi + 1)))
        idx.length, idx.last = length, tokens[-1]
        return idx

"""``spec=suffix``: SuffixDecoding-style speculation from frequency statistics of past text.

Data structure. A ``SuffixTrie`` of bounded depth D (``max_depth``) holds every substring of
up to D tokens of the texts added to it; a node is the string spelled by its root path and
carries ``count`` (how many times that string occurs) and ``cont`` (how many of those
occurrences are followed by another token; the sum of its children's counts). It is the
suffix tree of the texts cut at depth D, uncompressed, so each added token creates at most
D nodes. Two tries are used:

- per live sequence, one over its own prompt + output, extended incrementally (O(D) per
  token: the nodes of the current suffixes of length 0..D-1 are kept, so the longest
  matching suffix is found without walking); dropped by ``free``;
- one global trie over the outputs of past requests (added when a sequence finishes), FIFO:
  when the tokens it holds would exceed ``max_tree_tokens`` the oldest requests are removed
  again (their substrings decremented, empty nodes deleted).

Memory bound: nodes <= D * (max_tree_tokens + the tokens of the live sequences).

Proposal. For each match length m (``max_match`` down to 1) whose suffix of the context is a
node with continuations, the draft follows the most frequent child step by step; the
estimated probability of a step is ``child.count / node.cont`` and the path stops when the
product of those probabilities falls below ``min_prob``. Among all match lengths and both
tries the draft with the largest expected number of accepted tokens (the sum of the running
products) wins (the longer match on ties). Drafts are point masses (``Draft.probs`` None).
"""

from __future__ import annotations

from collections import deque

from infer.sequence import Sequence
from infer.spec.base import Draft

_DIRTY = -2  # best child unknown (after a decrement); recomputed on demand


class _Node:
    __slots__ = ("best", "children", "cont", "count")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.count = 0  # occurrences of this node's string
        self.cont = 0  # of those, followed by a token (sum of children's counts)
        self.best = -1  # token of the most frequent child (-1 none)

    def best_child(self) -> tuple[int, _Node] | None:
        if self.best == _DIRTY:
            self.best = (
                max(self.children, key=lambda t: (self.children[t].count, -t))
                if self.children
                else -1
            )
        return None if self.best < 0 else (self.best, self.children[self.best])

    def bump(self, token: int) -> _Node:
        """Count one more occurrence of this string followed by ``token``; returns that child."""
        child = self.children.get(token)
        if child is None:
            child = self.children[token] = _Node()
        child.count += 1
        self.cont += 1
        if self.best >= 0 and self.best != token:
            cur = self.children[self.best].count
            if child.count > cur or (child.count == cur and token < self.best):
                self.best = token
        elif self.best == -1:
            self.best = token
        return child


class SuffixTrie:
    """Depth-bounded substring trie with occurrence counts (see module docstring)."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = int(max_depth)
        self.root = _Node()
        self.num_nodes = 0

    def add(self, tokens: list[int]) -> None:
        """Insert every substring of ``tokens`` of length <= max_depth."""
        d = self.max_depth
        for s in range(len(tokens)):
            node = self.root
            node.count += 1
            for t in tokens[s : s + d]:
                node = node.bump(t)
                self.num_nodes += node.count == 1  # a count of 1 right after a bump: a new node

    def remove(self, tokens: list[int]) -> None:
        """Undo ``add(tokens)`` (the same list must have been added before)."""
        d = self.max_depth
        for s in range(len(tokens)):
            node = self.root
            node.count -= 1
            for t in tokens[s : s + d]:
                child = node.children[t]
                child.count -= 1
                node.cont -= 1
                if node.best == t:  # the best child lost a count: another may lead now
                    node.best = _DIRTY
                if child.count == 0:
                    # every descendant counted only occurrences inside this one: drop the branch
                    self.num_nodes -= _size(child)
                    del node.children[t]
                    break
                node = child

    def find(self, suffix: list[int]) -> _Node | None:
        """The node spelling ``suffix``, or None."""
        node = self.root
        for t in suffix:
            node = node.children.get(t)
            if node is None:
                return None
        return node


def _size(node: _Node) -> int:
    stack, n = [node], 0
    while stack:
        x = stack.pop()
        n += 1
        stack.extend(x.children.values())
    return n


def best_path(node: _Node, k: int, min_prob: float) -> tuple[list[int], float]:
    """Most frequent continuation of at most ``k`` tokens below ``node`` and its expected
    number of accepted tokens (sum of the running products of step probabilities)."""
    out: list[int] = []
    prob, score = 1.0, 0.0
    while len(out) < k and node.cont > 0:
        nxt = node.best_child()
        if nxt is None:
            break
        tok, child = nxt
        prob *= child.count / node.cont
        if prob < min_prob:
            break
        out.append(tok)
        score += prob
        node = child
    return out, score


class _Live:
    """A sequence's own trie plus the nodes of its current suffixes (active[d]: length d)."""

    __slots__ = ("active", "last", "length", "trie")

    def __init__(self, max_depth: int) -> None:
        self.trie = SuffixTrie(max_depth)
        self.active: list[_Node] = [self.trie.root]
        self.length = 0
        self.last = -1

    def extend(self, tokens: list[int]) -> None:
        d = self.trie.max_depth
        for t in tokens:
            self.trie.root.count += 1
            nxt = [self.trie.root]
            for node in self.active:
                child = node.bump(t)
                self.trie.num_nodes += child.count == 1
                if len(nxt) < d:
                    nxt.append(child)
            self.active = nxt
        self.length += len(tokens)
        if tokens:
            self.last = tokens[-1]


class SuffixProposer:
    """Suffix-trie proposer over the current request and past requests' outputs.

    num_tokens: most draft tokens per sequence per step (k).
    max_tree_tokens: most tokens of past outputs held by the global trie (FIFO eviction of
        whole requests; 0 disables the global trie).
    max_depth: longest substring stored (D); bounds memory (<= D nodes per token) and
        match + draft length.
    max_match: longest context suffix matched (< max_depth).
    min_prob: a draft stops once its estimated probability of being accepted drops below this.
    """

    def __init__(
        self,
        num_tokens: int,
        max_tree_tokens: int = 100_000,
        max_depth: int = 16,
        max_match: int = 8,
        min_prob: float = 0.1,
    ) -> None:
        if int(num_tokens) < 0:
            raise ValueError(f"spec.num_tokens must be >= 0, got {num_tokens}")
        if int(max_tree_tokens) < 0:
            raise ValueError(f"spec.proposer.max_tree_tokens must be >= 0, got {max_tree_tokens}")
        if not 1 <= int(max_match) < int(max_depth):
            raise ValueError(
                f"spec.proposer.max_match/max_depth must satisfy 1 <= max_match < max_depth, "
                f"got {max_match}, {max_depth}"
            )
        if not 0.0 <= float(min_prob) <= 1.0:
            raise ValueError(f"spec.proposer.min_prob must be in [0, 1], got {min_prob}")
        self.num_tokens = int(num_tokens)
        self.max_tree_tokens = int(max_tree_tokens)
        self.max_match = int(max_match)
        self.min_prob = float(min_prob)
        self.global_trie = SuffixTrie(int(max_depth))
        self._held: deque[list[int]] = deque()  # outputs in the global trie, oldest first
        self._held_tokens = 0
        self._live: dict[int, _Live] = {}

    # ---- Proposer protocol -----------------------------------------------------------------
    def propose(self, seqs: list[Sequence], num_slots: list[int]) -> Draft:
        """Up to ``num_slots[i]`` point-mass draft tokens per sequence."""
        return Draft([self.propose_tokens(s.seq_id, s.tokens, k) for s, k in zip(seqs, num_slots)])

    def commit(self, seqs: list[Sequence], num_accepted: list[int]) -> None:
        """Nothing to do: a sequence's trie catches up with its new tokens at the next ``propose``."""
        return

    def free(self, seq: Sequence) -> None:
        """Drop the sequence's trie; a finished one (stop or length) adds its output to the global trie."""
        self._live.pop(seq.seq_id, None)
        if seq.is_finished and seq.finish_reason in ("stop", "length"):
            self.add_output(seq.output_token_ids)

    # ---- core (token lists) -------------------------------------------------------------------
    def add_output(self, tokens: list[int]) -> None:
        """Add a finished request's output to the global trie, evicting the oldest outputs
        so at most ``max_tree_tokens`` tokens are held (a longer output keeps its tail)."""
        if self.max_tree_tokens == 0 or not tokens:
            return
        tokens = list(tokens[-self.max_tree_tokens :])
        while self._held and self._held_tokens + len(tokens) > self.max_tree_tokens:
            old = self._held.popleft()
            self._held_tokens -= len(old)
            self.global_trie.remove(old)
        self.global_trie.add(tokens)
        self._held.append(tokens)
        self._held_tokens += len(tokens)

    def propose_tokens(self, key: int, tokens: list[int], k: int) -> list[int]:
        """Draft of at most ``k`` tokens continuing ``tokens`` (the live trie is kept under ``key``)."""
        k = min(int(k), self.num_tokens)
        if k <= 0 or not tokens:
            return []
        live = self._catch_up(key, tokens)
        best: list[int] = []
        best_score = 0.0
        # the sequence's own text: the active nodes are its suffixes, no walking needed
        for m in range(min(self.max_match, len(live.active) - 1), 0, -1):
            draft, score = best_path(live.active[m], k, self.min_prob)
            if score > best_score:
                best, best_score = draft, score
        if self._held:
            for m in range(min(self.max_match, len(tokens)), 0, -1):
                node = self.global_trie.find(tokens[len(tokens) - m :])
                if node is None:
                    continue
                draft, score = best_path(node, k, self.min_prob)
                if score > best_score:
                    best, best_score = draft, score
        return best

    def _catch_up(self, key: int, tokens: list[int]) -> _Live:
        live = self._live.get(key)
        if (
            live is None
            or live.length > len(tokens)
            or (live.length and live.last != tokens[live.length - 1])
        ):
            live = self._live[key] = _Live(self.global_trie.max_depth)
        live.extend(tokens[live.length :])
        return live

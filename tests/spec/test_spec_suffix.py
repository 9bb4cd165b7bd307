"""Suffix-trie proposer: trie counts and eviction against brute force, proposals against a reference."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from infer.sampling_params import SamplingParams
from infer.sequence import SeqStatus, Sequence
from infer.spec.suffix import SuffixProposer, SuffixTrie, _Live, _Node


def substr_counts(texts: list[list[int]], d: int) -> Counter:
    c: Counter = Counter()
    for t in texts:
        for s in range(len(t)):
            for e in range(s + 1, min(s + d, len(t)) + 1):
                c[tuple(t[s:e])] += 1
    return c


def dump(node: _Node, prefix: tuple = ()) -> dict[tuple, tuple[int, int]]:
    """{string: (count, cont)} of every non-root node; also checks each node's cached best child."""
    out = {}
    if node.children:
        want = max(node.children, key=lambda t: (node.children[t].count, -t))
        assert node.best_child()[0] == want
    for t, ch in node.children.items():
        out[prefix + (t,)] = (ch.count, ch.cont)
        out.update(dump(ch, prefix + (t,)))
    return out


def check_trie(trie: SuffixTrie, texts: list[list[int]]) -> None:
    d = trie.max_depth
    c = substr_counts(texts, d)
    got = dump(trie.root)
    assert {w: cnt for w, (cnt, _) in got.items()} == dict(c)
    for w, (_, cont) in got.items():
        # followed by a token: occurrences of w + any token (only counted when len(w) < d)
        assert cont == (
            sum(v for u, v in c.items() if len(u) == len(w) + 1 and u[:-1] == w)
            if len(w) < d
            else 0
        )
    assert trie.num_nodes == len(c)


@pytest.mark.parametrize("depth", [1, 3, 6])
def test_trie_counts_and_removal_match_brute_force(depth: int) -> None:
    rng = random.Random(depth)
    trie = SuffixTrie(depth)
    texts = [[rng.randrange(3) for _ in range(rng.randint(1, 25))] for _ in range(8)]
    for t in texts:
        trie.add(t)
    check_trie(trie, texts)
    for i in (3, 0, 7, 5):
        trie.remove(texts[i])
        texts[i] = []
        check_trie(trie, texts)
    for t in texts:
        trie.remove(t)
    assert trie.num_nodes == 0 and not trie.root.children and trie.root.count == 0


def test_live_trie_extends_incrementally() -> None:
    rng = random.Random(0)
    live = _Live(5)
    tokens: list[int] = []
    while len(tokens) < 60:
        new = [rng.randrange(3) for _ in range(rng.randint(0, 4))]
        live.extend(new)
        tokens += new
        check_trie(live.trie, [tokens])
        # active[m] spells the suffix of length m
        for m, node in enumerate(live.active):
            assert node is live.trie.find(tokens[len(tokens) - m :])
        assert len(live.active) == min(5, len(tokens) + 1)


def reference(
    texts: list[list[int]], context: list[int], k: int, d: int, max_match: int, min_prob: float
) -> list[int]:
    """Brute-force proposal: for each match length (longest first, strict improvement wins), follow the
    most frequent next token (smallest id on ties) while the running probability stays >= min_prob."""
    c = substr_counts(texts, d)
    best, best_score = [], 0.0
    for m in range(min(max_match, len(context)), 0, -1):
        w = tuple(context[len(context) - m :])
        if w not in c:
            continue
        out, prob, score = [], 1.0, 0.0
        while len(out) < k and len(w) < d:
            nxt = {u[-1]: v for u, v in c.items() if len(u) == len(w) + 1 and u[:-1] == w}
            if not nxt:
                break
            tok = max(nxt, key=lambda t: (nxt[t], -t))
            prob *= nxt[tok] / sum(nxt.values())
            if prob < min_prob:
                break
            out.append(tok)
            score += prob
            w = w + (tok,)
        if score > best_score:
            best, best_score = out, score
    return best


def test_proposals_match_reference_on_own_text() -> None:
    """No past outputs: proposals come from the sequence's own prompt + output."""
    rng = random.Random(1)
    prop = SuffixProposer(num_tokens=4, max_tree_tokens=0, max_depth=7, max_match=3, min_prob=0.2)
    tokens = [rng.randrange(4) for _ in range(5)]
    while len(tokens) < 80:
        got = prop.propose_tokens(0, tokens, 4)
        # the own trie matches: the reference scores every candidate path the same way
        assert got == reference([tokens], tokens, 4, 7, 3, 0.2), tokens
        tokens += [rng.randrange(4) for _ in range(rng.randint(1, 3))]


def test_global_trie_proposes_past_outputs_and_evicts_oldest() -> None:
    prop = SuffixProposer(num_tokens=3, max_tree_tokens=12, max_depth=6, max_match=3, min_prob=0.0)
    a = [1, 2, 3, 4, 5, 6]
    b = [7, 8, 9, 10, 11, 12]
    prop.add_output(a)
    prop.add_output(b)
    assert prop.propose_tokens(0, [50, 51, 2, 3], 3) == [4, 5, 6]
    assert prop.propose_tokens(1, [50, 8, 9], 3) == [10, 11, 12]
    prop.add_output([20, 21, 22])  # 15 tokens > 12: the oldest (a) goes
    assert prop._held_tokens == 9 and list(prop._held) == [b, [20, 21, 22]]
    assert prop.propose_tokens(2, [50, 51, 2, 3], 3) == []
    assert prop.global_trie.num_nodes <= prop.global_trie.max_depth * prop.max_tree_tokens
    check_trie(prop.global_trie, [b, [20, 21, 22]])
    prop.add_output(list(range(100, 130)))  # longer than the bound: keeps its last 12 tokens only
    assert list(prop._held) == [list(range(118, 130))]


def test_most_frequent_continuation_wins() -> None:
    prop = SuffixProposer(
        num_tokens=2, max_tree_tokens=1000, max_depth=8, max_match=4, min_prob=0.1
    )
    for tail in ([3, 9], [3, 9], [3, 9], [4, 0]):
        prop.add_output([1, 2] + tail)
    assert prop.propose_tokens(0, [5, 1, 2], 2) == [3, 9]
    # the sequence's own text adds evidence too: 1 2 -> 4 0 three times in the context
    assert prop.propose_tokens(1, [1, 2, 4, 0, 1, 2, 4, 0, 1, 2, 4, 0, 1, 2], 2) == [4, 0]
    # min_prob cuts low-confidence drafts
    strict = SuffixProposer(
        num_tokens=2, max_tree_tokens=1000, max_depth=8, max_match=4, min_prob=0.9
    )
    for tail in ([3], [4]):
        strict.add_output([1, 2] + tail)
    assert strict.propose_tokens(0, [1, 2], 2) == []


def _seq(seq_id: int, out: list[int], status: SeqStatus, reason: str | None) -> Sequence:
    s = Sequence(seq_id, "r", None, [1, 2, 3], SamplingParams(), 0.0, output_token_ids=list(out))
    s.status, s.finish_reason = status, reason
    return s


def test_free_adds_only_finished_outputs() -> None:
    prop = SuffixProposer(num_tokens=2, max_tree_tokens=100)
    done = _seq(0, [40, 41, 42], SeqStatus.FINISHED, "length")
    preempted = _seq(1, [50, 51, 52], SeqStatus.WAITING, None)
    d = prop.propose([done, preempted], [2, 2])
    assert d.probs is None and len(d.tokens) == 2 and set(prop._live) == {0, 1}
    prop.free(done)
    prop.free(preempted)
    assert prop._live == {} and list(prop._held) == [[40, 41, 42]]
    assert prop.propose([_seq(2, [9, 40], SeqStatus.RUNNING, None)], [2]).tokens == [[41, 42]]


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"num_tokens": -1}, "num_tokens"),
        ({"num_tokens": 1, "max_tree_tokens": -5}, "max_tree_tokens"),
        ({"num_tokens": 1, "max_match": 8, "max_depth": 8}, "max_match"),
        ({"num_tokens": 1, "min_prob": 2.0}, "min_prob"),
    ],
)
def test_bad_config_names_the_field(kw: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SuffixProposer(**kw)

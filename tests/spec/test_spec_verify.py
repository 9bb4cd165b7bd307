"""Verification: greedy acceptance, exact rejection sampling, and the k=0 draw of plain sampling."""

from __future__ import annotations

import math

import pytest
import torch

from infer.sampling import Sampler, SamplingParams
from infer.sequence import Sequence
from infer.spec.verify import (
    rejection_core,
    sample_from,
    verify_greedy,
    verify_greedy_batch,
    verify_rejection,
)

V = 12


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand_probs(g: torch.Generator, *shape: int, sharp: float = 2.0) -> torch.Tensor:
    """Random distributions with some zero entries (like top-k/top-p truncation)."""
    logits = sharp * torch.randn(*shape, generator=g)
    logits[torch.rand(*shape, generator=g) < 0.2] = float("-inf")
    logits[..., 0] = logits[..., 0].clamp(min=0)  # keep at least one finite entry per row
    return logits.softmax(-1)


# ---- the k = 0 draw ---------------------------------------------------------------------
def test_sample_from_is_the_samplers_draw() -> None:
    """A seeded request draws the same tokens through sample_from as through today's sampler."""
    logits = torch.randn(20, 50, generator=_gen(1))
    seq = Sequence(
        0, "r", None, [1], SamplingParams(temperature=0.7, seed=3), 0.0, generator=_gen(3)
    )
    g = _gen(3)
    sampler = Sampler(50)
    for row in logits:
        want = sampler(row[None].clone(), [seq]).token_ids[0]
        assert sample_from((row / 0.7).softmax(-1), g) == want


def test_empty_draft_is_plain_sampling() -> None:
    probs = _rand_probs(_gen(2), 30, V)
    g1, g2 = _gen(5), _gen(5)
    got = [verify_rejection(p[None], [], None, g1) for p in probs]
    assert got == [[sample_from(p, g2)] for p in probs]
    assert len({t[0] for t in got}) > 1  # the draws really vary


# ---- greedy ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argmax", "draft", "want"),
    [
        ([7], [], [7]),  # no draft: the target's token
        ([1, 2, 3, 4], [1, 2, 3], [1, 2, 3, 4]),  # all accepted + bonus
        ([1, 9, 3, 4], [1, 2, 3], [1, 9]),  # first mismatch: its correction, then stop
        ([5, 2, 3], [1, 2], [5]),  # reject at once (later matches do not count)
    ],
)
def test_verify_greedy(argmax: list[int], draft: list[int], want: list[int]) -> None:
    assert verify_greedy(argmax, draft) == want


def test_verify_greedy_checks_lengths() -> None:
    with pytest.raises(ValueError, match="len\\(draft\\)\\+1"):
        verify_greedy([1, 2], [1, 2])


def test_verify_greedy_batch_matches_list_version() -> None:
    g = _gen(0)
    argmax = torch.randint(0, 3, (64, 5), generator=g)
    draft = torch.randint(0, 3, (64, 4), generator=g)
    num = torch.randint(0, 5, (64,), generator=g)
    n = verify_greedy_batch(argmax, draft, num)
    for b in range(64):
        k = int(num[b])
        assert argmax[b, : int(n[b]) + 1].tolist() == verify_greedy(
            argmax[b, : k + 1].tolist(), draft[b, :k].tolist()
        )


# ---- rejection sampling: special cases ---------------------------------------------------
def test_draft_equal_to_target_is_always_accepted() -> None:
    g = _gen(0)
    p = _rand_probs(g, 4, V)
    for _ in range(200):
        draft = [sample_from(p[j], g) for j in range(3)]
        assert verify_rejection(p, draft, p[:3].clone(), g)[:3] == draft


def test_draft_outside_target_support_is_rejected_to_the_residual() -> None:
    p = torch.zeros(2, V)
    p[:, 1] = 0.5
    p[:, 2] = 0.5
    g = _gen(0)
    # point mass on a token with p = 0: always rejected; residual is p itself
    outs = {tuple(verify_rejection(p, [0], None, g)) for _ in range(100)}
    assert outs == {(1,), (2,)}
    # point mass on token 1 (p = 0.5): accepted half the time; rejected -> residual is token 2 only
    outs2 = [tuple(verify_rejection(p, [1], None, g)) for _ in range(400)]
    assert set(outs2) == {(1, 1), (1, 2), (2,)}
    assert 120 < sum(o == (2,) for o in outs2) < 280


def test_degenerate_residual_falls_back_to_target() -> None:
    """p <= q wherever p > 0 gives an all-zero residual; the rejection there must still emit a token of p."""
    p = torch.zeros(1, 1, V)
    p[0, 0, 3] = 1.0
    q = torch.zeros(1, 1, V)
    q[0, 0, 3] = 1.0
    # force a rejection with u = 1 (outside [0, 1): the math itself cannot reject here)
    tokens, n = rejection_core(
        torch.cat([p, p], 1),
        torch.tensor([[3]]),
        torch.tensor([1]),
        q,
        torch.ones(1, 1),
        torch.ones(1, V),
    )
    assert int(n[0]) == 0 and int(tokens[0, 0]) == 3


def test_shape_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="target_probs"):
        verify_rejection(torch.rand(2, V), [1, 2], None, None)
    with pytest.raises(ValueError, match="draft_probs"):
        verify_rejection(torch.rand(3, V), [1, 2], torch.rand(3, V), None)


def test_seeded_generator_is_reproducible() -> None:
    p = _rand_probs(_gen(1), 4, V, sharp=0.5)
    q = _rand_probs(_gen(2), 3, V, sharp=0.5)
    draft = [int(q[j].argmax()) for j in range(3)]
    runs = [
        [verify_rejection(p, draft, q, g) for _ in range(50)] for g in (_gen(9), _gen(9), _gen(10))
    ]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_wrapper_equals_core_on_the_same_draws() -> None:
    g = _gen(4)
    for k in range(4):
        p = _rand_probs(g, k + 1, V, sharp=0.5)
        q = _rand_probs(g, k, V, sharp=0.5)
        draft = [sample_from(q[j], g) for j in range(k)]
        for probs in (q, None):
            seed = int(torch.randint(0, 2**31, (1,), generator=g))
            got = verify_rejection(p, draft, probs, _gen(seed))
            g2 = _gen(seed)
            u = torch.rand(k, generator=g2) if k else torch.empty(0)
            e = torch.empty(V).exponential_(generator=g2)
            tok, n = rejection_core(
                p[None],
                torch.tensor(draft, dtype=torch.long).reshape(1, k),
                torch.tensor([k]),
                None if probs is None else probs[None],
                u[None],
                e[None],
            )
            assert got == tok[0, : int(n[0]) + 1].tolist()


# ---- rejection sampling: the output distribution is the target's -------------------------
def _simulate(
    p: torch.Tensor, q: torch.Tensor, n: int, seed: int, point_mass: bool, naive: bool = False
):
    """n independent verifications of one step with fixed per-position targets p [k+1, V].

    Drafts are drawn from q [k, V] and verified with q (probabilistic) or as point masses
    (point_mass=True: exact whatever law the drafts come from, as long as it ignores the
    verifier's draws). naive=True accepts every draft (a deliberately wrong sampler).
    Returns (tokens [n, k+1], num_accepted [n])."""
    g = _gen(seed)
    k = p.shape[0] - 1
    draft = torch.stack(
        [torch.multinomial(q[j], n, replacement=True, generator=g) for j in range(k)], 1
    )
    uniform = torch.zeros(n, k) if naive else torch.rand(n, k, generator=g)
    noise = torch.empty(n, V).exponential_(generator=g)
    pp = p[None].expand(n, -1, -1)
    qq = None if point_mass else q[None].expand(n, -1, -1)
    if naive:  # accept anything: p(x) > 0 is not required
        pp = pp + 1e-3
    return rejection_core(pp, draft, torch.full((n,), k), qq, uniform, noise)


def _draft_like(p: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A draft distribution that overlaps p about half-way (a plausible draft model)."""
    r = _rand_probs(g, *p.shape, sharp=1.0)
    return 0.5 * p + 0.5 * r


def _tv_and_bound(tokens: torch.Tensor, p: torch.Tensor) -> tuple[float, float]:
    """Total-variation distance of the empirical distribution to p, and 4x its expected
    value under exact sampling (E|p_hat - p| ~ sqrt(2 p (1-p) / (pi n)) per entry)."""
    n = tokens.numel()
    emp = torch.bincount(tokens, minlength=V).double() / n
    tv = 0.5 * float((emp - p.double()).abs().sum())
    expected = 0.5 * sum(math.sqrt(2 * pi * (1 - pi) / (math.pi * n)) for pi in p.tolist())
    return tv, 4 * expected + 1e-4


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("point_mass", [False, True])
def test_rejection_sampling_approximates_target_distribution(k: int, point_mass: bool) -> None:
    """At every position j, the emitted token (given that position is reached) follows p_j, and
    the distance to p_j shrinks as samples grow (roughly as 1/sqrt(n))."""
    g = _gen(100 + k)
    p = _rand_probs(g, k + 1, V, sharp=2.0)
    q = _draft_like(p[:k], g)
    tvs = []
    for n in (100, 1_000, 10_000, 100_000):
        tokens, acc = _simulate(p, q, n, seed=n + k, point_mass=point_mass)
        for j in range(k + 1):
            reached = acc >= j
            if n == 100_000:
                assert int(reached.sum()) > 500, "test too weak: position rarely reached"
            elif int(reached.sum()) < 50:
                continue
            tv, bound = _tv_and_bound(tokens[reached, j], p[j])
            assert tv < bound, f"position {j}, n={n}: TV {tv:.4f} >= {bound:.4f}"
            if j == 0:
                tvs.append(tv)
    assert tvs[-1] < tvs[0] / 5 and tvs[-1] < 0.02, tvs


@pytest.mark.parametrize("point_mass", [False, True])
def test_distribution_check_catches_a_wrong_sampler(point_mass: bool) -> None:
    """The same check fails for a sampler that accepts every draft (so the test above can fail)."""
    g = _gen(7)
    p = _rand_probs(g, 3, V, sharp=1.0)
    q = _draft_like(p[:2], g)
    tokens, _ = _simulate(p, q, 100_000, seed=1, point_mass=point_mass, naive=True)
    tv, bound = _tv_and_bound(tokens[:, 0], p[0])
    assert tv > bound


def test_per_sequence_verifier_matches_target() -> None:
    """verify_rejection itself (per-request generator), probabilistic drafts, k = 2."""
    g = _gen(11)
    p = _rand_probs(g, 3, V, sharp=1.0)
    q = _rand_probs(g, 2, V, sharp=1.0)
    first = []
    for _ in range(2000):
        draft = [int(torch.multinomial(q[j], 1, generator=g)) for j in range(2)]
        first.append(verify_rejection(p, draft, q, g)[0])
    tv, bound = _tv_and_bound(torch.tensor(first), p[0])
    assert tv < bound

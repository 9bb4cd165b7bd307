"""Verification of draft tokens against the target model: greedy and exact rejection sampling.

Shapes: ``V`` = vocabulary, ``k`` = draft tokens of one sequence, ``B`` = sequences.
All probabilities are float32 *processed* distributions (temperature, top-k/p, min-p and
penalties already applied by the request's own processors); rows need not be normalised
exactly, only be non-negative with a positive sum.

Randomness. Every draw comes from the request's own ``torch.Generator``, in a fixed order
per call (``k`` uniforms, then one row of ``V`` exponentials), so a seeded request gives the
same tokens whatever shares its batch. The final draw is the exponential race
``argmax(r / E)``, ``E ~ Exp(1)`` i.i.d., which picks index ``i`` with probability
``r_i / sum(r)`` (so ``r`` needs no normalisation). With an empty draft the call consumes
exactly what plain sampling consumes and returns the same token.

Exactness (Leviathan et al. 2023; Chen et al. 2023). Draft token ``x_j ~ q_j`` is accepted
with probability ``min(1, p_j(x)/q_j(x))``; at the first rejection the token is drawn from
``norm(max(0, p_j - q_j))`` and verification stops; if every draft is accepted a bonus token
is drawn from ``p_k``. Each emitted token is then distributed exactly as ``p`` at its
position. A point-mass draft (``q`` = one-hot at ``x``) accepts with probability ``p(x)`` and
its residual is ``p`` with ``x`` zeroed.
"""

from __future__ import annotations

import torch


def sample_from(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One draw from ``probs`` (float32 [V], non-negative, any positive scale) by the
    exponential race; consumes V exponentials from ``generator`` (the sampler's draw)."""
    noise = torch.empty_like(probs).exponential_(generator=generator)
    return int((probs / noise).argmax())


def verify_greedy(target_argmax: list[int], draft: list[int]) -> list[int]:
    """Greedy verification.

    target_argmax: ``len(draft) + 1`` token ids, the argmax of the processed target logits at
    each verified position (position j predicts the token after ``draft[:j]``).
    Returns the accepted drafts (the longest prefix equal to the target's argmax) followed by
    the target's own token at the first mismatch (or the bonus token): 1..k+1 ids.
    """
    if len(target_argmax) != len(draft) + 1:
        raise ValueError(
            f"target_argmax has {len(target_argmax)} entries; expected len(draft)+1 = {len(draft) + 1}"
        )
    out: list[int] = []
    for t, d in zip(target_argmax, draft):
        out.append(int(t))
        if int(t) != int(d):
            return out
    out.append(int(target_argmax[-1]))
    return out


def verify_greedy_batch(
    target_argmax: torch.Tensor, draft: torch.Tensor, num_draft: torch.Tensor
) -> torch.Tensor:
    """Batched greedy acceptance counts (no host sync).

    target_argmax: int64 [B, K+1]; draft: int64 [B, K] (padded); num_draft: int64 [B] (<= K).
    Returns int64 [B]: accepted drafts per row; row b emits ``target_argmax[b, :n_b + 1]``.
    """
    k = draft.shape[1]
    pos = torch.arange(k, device=draft.device)
    match = (target_argmax[:, :k] == draft) & (pos[None, :] < num_draft[:, None])
    return match.long().cumprod(-1).sum(-1)


def rejection_core(
    target_probs: torch.Tensor,
    draft: torch.Tensor,
    num_draft: torch.Tensor,
    draft_probs: torch.Tensor | None,
    uniform: torch.Tensor,
    noise: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched rejection sampling given the random draws (vectorised; no host sync).

    target_probs: float32 [B, K+1, V]: p at each verified position; row ``num_draft[b]`` of
        sequence b is its bonus distribution (rows beyond it are ignored).
    draft: int64 [B, K] draft ids, padded beyond ``num_draft[b]``.
    num_draft: int64 [B], 0 <= num_draft[b] <= K.
    draft_probs: float32 [B, K, V] (q each draft was drawn from) or None for point-mass drafts.
    uniform: float32 [B, K] U[0, 1) draws; noise: float32 [B, V] Exp(1) draws.
    Returns (tokens int64 [B, K+1], num_accepted int64 [B]): row b emits
    ``tokens[b, :num_accepted[b] + 1]`` (accepted drafts, then the correction/bonus token).
    """
    b, k = draft.shape
    dev = target_probs.device
    rows = torch.arange(b, device=dev)
    pos = torch.arange(k, device=dev)
    p_x = target_probs[:, :k].gather(-1, draft[..., None]).squeeze(-1)
    q_x = (
        torch.ones_like(p_x)
        if draft_probs is None
        else draft_probs.gather(-1, draft[..., None]).squeeze(-1)
    )
    # u < p/q  <=>  u*q < p (no division; q(x) = 0 accepts iff p(x) > 0; p(x) = 0 never accepts)
    accept = (uniform * q_x < p_x) & (pos[None, :] < num_draft[:, None])
    n = accept.long().cumprod(-1).sum(-1)
    p_row = target_probs[rows, n]
    rejected = n < num_draft
    n_q = n.clamp(max=max(k - 1, 0))
    if k == 0:
        resid = p_row
    else:
        if draft_probs is None:
            q_row = torch.zeros_like(p_row)
            q_row[rows, draft[rows, n_q]] = p_row[rows, draft[rows, n_q]]
        else:
            q_row = draft_probs[rows, n_q]
        resid = torch.where(rejected[:, None], (p_row - q_row).clamp(min=0), p_row)
        # p == q (or p <= q everywhere it is positive): the residual is empty; any rejection
        # then had probability 0 up to rounding, so p is the correct fallback
        empty = resid.sum(-1) <= 0
        resid = torch.where(empty[:, None], p_row, resid)
    final = (resid / noise).argmax(-1)
    tokens = torch.cat([draft, torch.zeros(b, 1, dtype=draft.dtype, device=dev)], dim=1)
    tokens[rows, n] = final
    return tokens, n


def verify_rejection(
    target_probs: torch.Tensor,
    draft: list[int],
    draft_probs: torch.Tensor | None,
    generator: torch.Generator | None,
) -> list[int]:
    """Exact rejection-sampling verification of one sequence.

    target_probs: float32 [k+1, V], the processed target distribution at each verified
        position (row k is the bonus distribution).
    draft: the k proposed ids.
    draft_probs: float32 [k, V], the distribution each draft was drawn from, or None for a
        point-mass draft.
    generator: the request's generator; draws k uniforms then V exponentials.
    Returns 1..k+1 ids: the accepted drafts, then the correction or bonus token. With an empty
    draft this is ``[sample_from(target_probs[0], generator)]``.
    """
    k = len(draft)
    if target_probs.dim() != 2 or target_probs.shape[0] != k + 1:
        raise ValueError(
            f"target_probs has shape {tuple(target_probs.shape)}; expected [len(draft)+1={k + 1}, V]"
        )
    if draft_probs is not None and tuple(draft_probs.shape) != (k, target_probs.shape[1]):
        raise ValueError(
            f"draft_probs has shape {tuple(draft_probs.shape)}; expected [{k}, {target_probs.shape[1]}]"
        )
    dev = target_probs.device
    # no uniform draw at all when k == 0, so plain sampling's generator stream is untouched
    uniform = (
        torch.rand(k, generator=generator, device=dev, dtype=target_probs.dtype)
        if k
        else torch.empty(0, device=dev, dtype=target_probs.dtype)
    )
    noise = torch.empty_like(target_probs[0]).exponential_(generator=generator)
    tokens, n = rejection_core(
        target_probs[None],
        torch.tensor([draft], dtype=torch.long, device=dev).reshape(1, k),
        torch.tensor([k], dtype=torch.long, device=dev),
        None if draft_probs is None else draft_probs[None],
        uniform[None],
        noise[None],
    )
    return tokens[0, : int(n[0]) + 1].tolist()

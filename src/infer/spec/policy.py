"""How many draft tokens each sequence gets this step: fixed k, or adaptive k.

Adaptive model.
- Acceptance: each draft token is accepted independently with probability ``a`` (per
  sequence), so k drafts emit ``E(k) = 1 + a + ... + a^k = (1 - a^(k+1)) / (1 - a)`` tokens
  and the j-th draft adds ``a^j``. From a step that drafted d and accepted n, the maximum-
  likelihood estimate of ``a`` is n / (n + [n < d]) (n successes, one failure unless all were
  accepted); the policy keeps exponentially decayed sums of n and of n + [n < d] per
  sequence and globally, shrunk toward a prior with ``prior_weight`` pseudo-trials
  (a sequence's prior is the global estimate; the global prior is ``prior``). Steps where a
  sequence drafts nothing decay its sums too, so a sequence that was switched off drifts back
  to the prior and is tried again when speculation is cheap.
- Cost: a forward over N tokens takes ``1 + N / knee_tokens`` units (1 = streaming the weights
  once; ``knee_tokens`` = tokens per forward at which compute equals that, ~10-20 for a small
  fp32 model on a CPU, hundreds on a GPU), and every draft token costs ``draft_cost`` more
  (0 for n-gram/suffix lookups; the draft/target time ratio for a draft model).
- Choice: maximise emitted tokens per unit time, sum_i E_i(k_i) / T. Start from k = 0 and add
  the single draft slot with the largest marginal gain ``a_i^(k_i+1)`` while that gain per
  unit cost beats the current rate by ``1 + margin``; marginal gains only shrink, so this
  greedy order is optimal for the ratio (with margin 0), and ``margin`` keeps speculation off
  where the model says it barely pays (unmodelled overheads then cannot make it lose).
  At small batches the forward is memory-bound, drafts are nearly free and k grows to
  ``num_tokens``; at large batches each draft must be accepted with high probability to pay.
"""

from __future__ import annotations

import heapq

from infer.sequence import Sequence


def expected_tokens(a: float, k: int) -> float:
    """Tokens emitted by a verify step with k drafts when each is accepted with probability a."""
    return float(k + 1) if a >= 1.0 else (1.0 - a ** (k + 1)) / (1.0 - a)


class FixedPolicy:
    """Always ``num_tokens`` draft slots per sequence (the engine still clamps to the limits)."""

    def __init__(self, num_tokens: int) -> None:
        if int(num_tokens) < 0:
            raise ValueError(f"spec.num_tokens must be >= 0, got {num_tokens}")
        self.num_tokens = int(num_tokens)

    def num_slots(self, seqs: list[Sequence], batch_size: int) -> list[int]:
        return [self.num_tokens] * len(seqs)

    def update(self, seqs: list[Sequence], drafted: list[int], accepted: list[int]) -> None:
        return None

    def free(self, seq: Sequence) -> None:
        return None


class AdaptivePolicy:
    """Per-step, per-sequence k from acceptance estimates and a cost model (module docstring).

    num_tokens: most draft slots per sequence (k_max).
    knee_tokens: tokens per forward where compute time equals weight-streaming time (> 0).
    draft_cost: extra cost of one draft token, in units of one weight-streaming forward (>= 0).
    margin: a draft slot must beat the current tokens-per-time rate by this fraction (>= 0).
    decay: weight of the past in the acceptance sums per step, in [0, 1).
    prior: acceptance probability assumed before any evidence, in [0, 1].
    prior_weight: pseudo-trials of the prior (> 0; larger = slower to trust evidence).
    """

    def __init__(
        self,
        num_tokens: int,
        knee_tokens: float = 16.0,
        draft_cost: float = 0.0,
        margin: float = 0.05,
        decay: float = 0.8,
        prior: float = 0.5,
        prior_weight: float = 2.0,
    ) -> None:
        checks = {
            "num_tokens": int(num_tokens) >= 0,
            "knee_tokens": float(knee_tokens) > 0,
            "draft_cost": float(draft_cost) >= 0,
            "margin": float(margin) >= 0,
            "decay": 0 <= float(decay) < 1,
            "prior": 0 <= float(prior) <= 1,
            "prior_weight": float(prior_weight) > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"spec.policy.{name} is out of range (got {locals()[name]!r}); see AdaptivePolicy's docstring"
                )
        self.num_tokens = int(num_tokens)
        self.knee_tokens = float(knee_tokens)
        self.draft_cost = float(draft_cost)
        self.margin = float(margin)
        self.decay = float(decay)
        self.prior = float(prior)
        self.prior_weight = float(prior_weight)
        self._global = [0.0, 0.0]  # decayed (accepted, trials) over all sequences
        self._seq: dict[int, list[float]] = {}  # seq_id -> decayed (accepted, trials)

    # ---- estimates ---------------------------------------------------------------------------
    def global_rate(self) -> float:
        acc, trials = self._global
        return (acc + self.prior_weight * self.prior) / (trials + self.prior_weight)

    def rate(self, seq_id: int) -> float:
        """Estimated per-token acceptance probability of a sequence."""
        acc, trials = self._seq.get(seq_id, (0.0, 0.0))
        return (acc + self.prior_weight * self.global_rate()) / (trials + self.prior_weight)

    # ---- policy --------------------------------------------------------------------------------
    def num_slots(self, seqs: list[Sequence], batch_size: int) -> list[int]:
        """Draft slots per sequence. batch_size: tokens the step computes anyway (decode rows
        plus prefill-chunk tokens; at least len(seqs))."""
        return self.choose([self.rate(s.seq_id) for s in seqs], batch_size)

    def choose(self, rates: list[float], batch_size: int) -> list[int]:
        """The greedy allocation for per-sequence acceptance probabilities ``rates``."""
        ks = [0] * len(rates)
        if self.num_tokens == 0 or not rates:
            return ks
        gain = float(len(rates))  # each decoding sequence emits one token without drafts
        time = 1.0 + max(int(batch_size), len(rates)) / self.knee_tokens
        cost = 1.0 / self.knee_tokens + self.draft_cost
        heap = [(-a, i) for i, a in enumerate(rates) if a > 0]
        heapq.heapify(heap)
        while heap:
            neg_g, i = heapq.heappop(heap)
            g = -neg_g
            if g / cost <= (1.0 + self.margin) * gain / time:
                break  # the best remaining slot does not pay; later ones gain less
            ks[i] += 1
            gain += g
            time += cost
            if ks[i] < self.num_tokens:
                heapq.heappush(heap, (-(g * rates[i]), i))
        return ks

    def update(self, seqs: list[Sequence], drafted: list[int], accepted: list[int]) -> None:
        """After verification: ``drafted[i]`` tokens proposed for ``seqs[i]``, ``accepted[i]`` kept."""
        b = self.decay
        g_acc, g_trials = 0.0, 0.0
        for s, d, n in zip(seqs, drafted, accepted):
            if n > d or n < 0:
                raise ValueError(
                    f"accepted ({n}) must be in [0, drafted={d}] for sequence {s.seq_id}"
                )
            trials = n + (1 if n < d else 0)
            st = [0.0, 0.0] if s.is_finished else self._seq.setdefault(s.seq_id, [0.0, 0.0])  # finished: freed already
            st[0] = b * st[0] + n
            st[1] = b * st[1] + trials
            g_acc += n
            g_trials += trials
        self._global[0] = b * self._global[0] + g_acc
        self._global[1] = b * self._global[1] + g_trials

    def free(self, seq: Sequence) -> None:
        self._seq.pop(seq.seq_id, None)


def make_policy(kind: str, num_tokens: int, **adaptive: float) -> FixedPolicy | AdaptivePolicy:
    """``spec.policy.kind``: ``fixed`` (the adaptive knobs are ignored) or ``adaptive``."""
    if kind == "fixed":
        return FixedPolicy(num_tokens)
    if kind == "adaptive":
        return AdaptivePolicy(num_tokens, **adaptive)
    raise ValueError(f"spec.policy.kind={kind!r} is not one of: fixed, adaptive")

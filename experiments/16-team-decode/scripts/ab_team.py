"""A/B of the decoder stack's team decode (one OpenMP team per step, set_team_decode(True), the
default) against a parallel region per projection (False), in one process on one engine:
SmolLM2 fp32 single stream (32-token prompt, 128 new tokens, greedy), rounds alternating the
order; prints each round's decode tok/s and the median of the per-round ratios. Asserts equal
tokens.

    .venv/bin/python experiments/16-team-decode/scripts/ab_team.py 2 10

Arguments: threads, rounds."""
import statistics
import sys

from infer import LLM, SamplingParams
from infer.models import decoder_stack

th, rounds = int(sys.argv[1]), int(sys.argv[2])
llm = LLM(threads=th)
mod = decoder_stack.load()
assert mod is not None, "the C++ decoder stack did not build"
sp = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
res: dict[bool, list[float]] = {True: [], False: []}
outs: dict[bool, list[int]] = {}
for r in range(rounds):
    for on in ([True, False] if r % 2 == 0 else [False, True]):
        mod.set_team_decode(on)
        o = llm.generate([{"prompt_token_ids": list(range(100, 132))}], sp, use_tqdm=False)[0]
        tt = o.metrics["token_times"]
        res[on].append((len(tt) - 1) / (tt[-1] - tt[0]))
        assert outs.setdefault(on, list(o.outputs[0].token_ids)) == list(o.outputs[0].token_ids)
mod.set_team_decode(True)
assert outs[True] == outs[False], "team decode changed the tokens"
print("team     ", " ".join(f"{x:.1f}" for x in res[True]))
print("per-proj ", " ".join(f"{x:.1f}" for x in res[False]))
print(f"team / per-projection: median {statistics.median(a / b for a, b in zip(res[True], res[False])):.3f}, "
      f"best {max(res[True]):.1f} vs {max(res[False]):.1f} tok/s; tokens identical")

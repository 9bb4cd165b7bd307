"""Engine vs its peers (HF transformers, vLLM CPU, OpenVINO GenAI), side by side in one run,
same threads, same requests (token ids), greedy, fixed output lengths.

For each thread count, reports (and saves as JSON):
  * offline throughput on a mixed workload (default 128 requests, prompts 32-512 tokens,
    outputs 32-256, all submitted at once): useful output tok/s of the engine and of each peer
    (generated tokens / wall time, start-up and warm-up excluded), ratios ours / peer, greedy
    token equality per request, and the fraction of the compute roofline the engine reaches
    (model FLOPs of the workload / GEMM FLOP/s measured in this run);
  * single-stream decode tok/s (one request, 128 new tokens) of the engine and of each peer,
    as a fraction of the memory-read bound (weight bytes / read bandwidth measured in this run)
    and of the F.linear weight-pass time.

Peers run in their own venvs as subprocesses (scripts/setup_peers.sh installs vLLM and
OpenVINO; HF runs with this interpreter):

    .venv/bin/python scripts/bench_engine.py --threads 1 2 --requests 48 --baseline hf vllm openvino

With ``--repeat K`` the engine and the peers run K rounds, the order reversed every other
round (ours first, then the peers first), and each engine's best round is compared: on a host
whose memory speed drifts over minutes, a single ours-then-peers pass is not neutral.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from infer import LLM, SamplingParams, hugepages
from infer.eval.peers import (
    PEERS,
    Peer,
    format_table,
    make_job,
    make_peer,
    parse_baselines,
    peer_metrics,
    run_peer,
)
from infer.models.llama import LlamaForCausalLM
from infer.quant import dense_cpu


def corpus_tokens(tokenizer, n: int) -> list[int]:  # type: ignore[no-untyped-def]
    """Token ids of English prose that ships with Python (pydoc topics)."""
    import pydoc_data.topics as t

    text = "\n\n".join(t.topics.values())
    return tokenizer.encode(text[: n * 6], add_special_tokens=False)[:n]


def make_workload(tokens: list[int], n: int, plen: tuple[int, int], olen: tuple[int, int],
                  seed: int) -> list[tuple[list[int], int]]:
    """n (prompt_ids, output_len) pairs: prompts are corpus slices of uniform random length."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p = rng.randint(*plen)
        s = rng.randrange(0, len(tokens) - p)
        out.append((tokens[s : s + p], rng.randint(*olen)))
    return out


def linear_shapes(model: LlamaForCausalLM, prefix: str) -> list[tuple[int, int]]:
    """(out, in) of the model's Linear layers whose names start with ``prefix``. From the
    layers' sizes, not their tensors: quant=none packs the weights into the CPU kernel's
    layout, so the F.linear references here time fresh matrices of the same shapes."""
    return [(m.out_features, m.in_features) for n, m in model.named_modules()
            if n.startswith(prefix) and hasattr(m, "out_sizes")]


def model_dtype(model: LlamaForCausalLM) -> torch.dtype:
    return model.layers[0].input_layernorm.weight.dtype


def model_flops(model: LlamaForCausalLM, work: list[tuple[list[int], int]]) -> float:
    """FLOPs the workload needs: 2 x weights per processed token (LM head only for sampled
    tokens) plus causal attention (QK^T and PV over each token's context)."""
    a = model.args
    per_layer = sum(n * k for n, k in linear_shapes(model, "layers.0."))
    body = 2 * per_layer * a.num_layers
    head = 2 * a.vocab_size * a.hidden_size
    attn_per_pair = 4 * a.num_heads * a.head_dim * a.num_layers  # QK and PV, per (query, key)
    total = 0.0
    for prompt, out in work:
        n = len(prompt) + out - 1  # the last sampled token is never fed back
        total += n * body + out * head + attn_per_pair * n * (n + 1) / 2
    return total


def gemm_rate(model: LlamaForCausalLM, rows: int = 512, reps: int = 5) -> float:
    """FLOP/s of the model's own projection GEMMs at ``rows`` tokens (best of reps), the faster
    of F.linear and the engine's packed CPU GEMM where that is built: the roofline is what
    the best GEMM on this machine allows, not what one library reaches."""
    ws = [torch.randn(n, k, dtype=model_dtype(model)) for n, k in linear_shapes(model, "layers.0.")]
    xs = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=w.dtype) for w in ws}
    flops = sum(2 * rows * w.numel() for w in ws)
    groups = [[lambda w=w: F.linear(xs[w.shape[1]], w) for w in ws]]
    if all(dense_cpu.usable(w) for w in ws):
        packed = [(dense_cpu.pack(w), w.shape[0], w.shape[1]) for w in ws]
        groups.append([lambda p=p, n=n, k=k: dense_cpu.packed_linear(xs[k], p, n) for p, n, k in packed])
    best = float("inf")
    for calls in groups:
        for _ in range(reps):
            t = time.perf_counter()
            for call in calls:
                call()
            best = min(best, time.perf_counter() - t)
    return flops / best


def weight_pass_time(model: LlamaForCausalLM, reps: int = 7) -> float:
    """Seconds for one pass of GEMVs over every weight matrix (LM head included): the
    bytes a single-stream decode step must stream from memory."""
    a = model.args
    shapes = linear_shapes(model, "") + [(a.vocab_size, a.hidden_size)]
    ws = [torch.randn(n, k, dtype=model_dtype(model)) for n, k in shapes]
    xs = {w.shape[1]: torch.randn(1, w.shape[1], dtype=w.dtype) for w in ws}
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        for w in ws:
            F.linear(xs[w.shape[1]], w)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run_engine(llm: LLM, work: list[tuple[list[int], int]]) -> tuple[float, list]:  # type: ignore[type-arg]
    prompts = [{"prompt_token_ids": p} for p, _ in work]
    params = [SamplingParams(temperature=0, max_tokens=o, ignore_eos=True) for _, o in work]
    t = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=True)
    return time.perf_counter() - t, outs


def weight_bytes(model: LlamaForCausalLM) -> int:
    """Bytes of every parameter a decode step reads (a tied LM head counted once)."""
    return sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())


def read_bandwidth(mb: int = 512, reps: int = 5) -> float:
    """Memory read bandwidth in bytes/s: best of ``reps`` sums over an ``mb`` MB fp32 tensor,
    on 2 MiB pages where the OS gives them, like the engine's packed weights (on 4 KiB pages
    the probe is TLB-bound and reads slower than the weight stream it is meant to bound)."""
    x = hugepages.empty((mb * 2**20 // 4,), torch.float32).fill_(1.0)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best


def our_single_stream(llm: LLM, prompt: list[int], n: int, rounds: int) -> tuple[float, list[int]]:
    """Decode-only tok/s (first to last token) of one request, best of ``rounds``; its tokens."""
    best, out = 0.0, []
    sp = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
    for _ in range(rounds):
        o = llm.generate([{"prompt_token_ids": prompt}], sp, use_tqdm=False)[0]
        tt = o.metrics["token_times"]
        best, out = max(best, (len(tt) - 1) / (tt[-1] - tt[0])), list(o.outputs[0].token_ids)
    return best, out


def _offline_tok_s(result: dict[str, object]) -> float:
    off = result.get("offline")
    return float(off["output_tok_s"]) if isinstance(off, dict) else 0.0


def run_ours(args: argparse.Namespace, threads: int, work: list[tuple[list[int], int]] | None
             ) -> dict[str, object]:
    """One round of the engine at ``threads`` threads: single stream, the memory probes and
    (unless skipped) the offline workload (made from the corpus when ``work`` is None). The
    engine is torn down before returning, so a peer after it gets the memory and the cores."""
    llm = LLM(model=args.model, attention=args.attention, threads=threads, **json.loads(args.engine_args))
    model, tok = llm.engine.runner.model, llm.get_tokenizer()
    prompt = corpus_tokens(tok, 64)[:32]
    ss, ss_out = our_single_stream(llm, prompt, args.decode_tokens, args.rounds)
    r: dict[str, object] = {"decode_tok_s": ss, "single_output": ss_out, "prompt": prompt,
                            "weight_pass_s": weight_pass_time(model), "read_bw": read_bandwidth(),
                            "weight_bytes": weight_bytes(model), "path": llm.model_path,
                            "pad": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id}
    print(f"[{threads} thread(s)] engine single stream: {ss:.1f} tok/s", flush=True)
    if not args.skip_throughput:
        if work is None:
            work = make_workload(corpus_tokens(tok, 200_000), args.requests, tuple(args.prompt_len),
                                 tuple(args.output_len), seed=0)
        rate = gemm_rate(model)
        t_eng, routs = run_engine(llm, work)
        useful = sum(o for _, o in work)
        r.update(work=work, elapsed_s=t_eng, output_tok_s=useful / t_eng, useful=useful,
                 gemm_rate=max(rate, gemm_rate(model)), flops=model_flops(model, work),
                 outputs=[list(o.outputs[0].token_ids) for o in routs],
                 preemptions=llm.engine.scheduler.num_preemptions)
        print(f"[{threads} thread(s)] engine offline: {len(work)} requests, {useful} useful tokens in "
              f"{t_eng:.1f} s = {useful / t_eng:.1f} tok/s", flush=True)
    del llm, model
    gc.collect()
    return r


def peer_requests(args: argparse.Namespace, name: str, total: int) -> int:
    """How many of the ``total`` requests ``name`` runs (HF: ``--hf-requests`` when given)."""
    return args.hf_requests if name == "hf" and args.hf_requests else total


def run_one_peer(args: argparse.Namespace, threads: int, name: str, peer: Peer, ours: dict[str, object],
                 logs: Path) -> dict[str, object]:
    """One round of ``peer`` on the requests and single-stream prompt of ``ours``; HF: its
    best static batch size."""
    work = ours.get("work") or []
    n = peer_requests(args, name, len(work))  # type: ignore[arg-type]
    best: dict[str, object] | None = None
    per_batch: dict[str, object] = {}
    for b in args.hf_batch if name == "hf" else [0]:
        if name == "hf":
            peer.options.update(batch_size=b, pad_id=int(ours["pad"]))  # type: ignore[call-overload]
        job = make_job(peer, ours["path"], "float32", threads, work[:n],  # type: ignore[arg-type,index]
                       (ours["prompt"], args.decode_tokens, args.rounds), 2)
        print(f"[{threads} thread(s)] running {name} ...", flush=True)
        r = run_peer(peer, job, log_dir=logs)
        if name == "hf" and r["offline"]:
            per_batch[f"hf_b{b}_output_tok_s"] = r["offline"]["output_tok_s"]
        if best is None or _offline_tok_s(r) > _offline_tok_s(best):
            best = r
    assert best is not None
    return {**best, **per_batch}


def _best_of(rounds: list[dict[str, object]]) -> dict[str, object]:
    """A peer's result made of its best offline round and its best single-stream round."""
    off = max(rounds, key=_offline_tok_s)
    ss = max(rounds, key=lambda r: float(r["single_stream"]["decode_tok_s"]) if r.get("single_stream") else 0.0)  # type: ignore[index]
    return {**off, "single_stream": ss.get("single_stream")}


def bench_threads(args: argparse.Namespace, threads: int, peers: dict[str, Peer]) -> dict[str, object]:
    """``args.repeat`` rounds of the engine and every peer at ``threads`` threads, the order
    reversed every other round (ours first, then peers first) so that a host whose memory
    speed drifts favours nobody; each engine's best round is compared. One flat metrics dict,
    with every round's figures under ``rounds``."""
    torch.set_num_threads(threads)
    logs = Path(args.out).parent / "peer_logs" / f"t{threads}"
    ours: list[dict[str, object]] = []
    theirs: dict[str, list[dict[str, object]]] = {p: [] for p in peers}
    rounds: list[dict[str, float]] = []
    for k in range(args.repeat):
        # round 1 runs ours first: it makes the requests (and the prompt) the peers get
        order = ["infer", *peers] if k % 2 == 0 else [*peers, "infer"]
        seen: dict[str, float] = {}
        for name in order:
            if name == "infer":
                ours.append(run_ours(args, threads, ours[0].get("work") if ours else None))  # type: ignore[arg-type]
                o = ours[-1]
                # this round's probe and the single stream's fraction of it (the table's
                # fraction divides the best stream by the best probe of the whole run)
                seen.update(infer=float(o.get("output_tok_s", 0.0)),  # type: ignore[arg-type]
                            infer_decode=float(o["decode_tok_s"]),  # type: ignore[arg-type]
                            infer_read_gb_s=float(o["read_bw"]) / 1e9,  # type: ignore[arg-type]
                            infer_decode_frac_round=float(o["decode_tok_s"]) * int(o["weight_bytes"])  # type: ignore[arg-type,call-overload]
                            / float(o["read_bw"]))  # type: ignore[arg-type]
            else:
                r = run_one_peer(args, threads, name, peers[name], ours[0], logs)
                theirs[name].append(r)
                ss = r.get("single_stream")
                seen.update({name: _offline_tok_s(r),
                             f"{name}_decode": float(ss["decode_tok_s"]) if ss else 0.0})  # type: ignore[index]
        rounds.append(seen)
        print(f"[{threads} thread(s)] round {k + 1}/{args.repeat} ({' then '.join(order)}): "
              + ", ".join(f"{key} {v:.2f}" if v < 2 else f"{key} {v:.1f}" for key, v in seen.items()), flush=True)
    best_off = max(ours, key=lambda r: float(r.get("output_tok_s", 0.0)))  # type: ignore[arg-type]
    best_ss = max(ours, key=lambda r: float(r["decode_tok_s"]))  # type: ignore[arg-type]
    wb = int(best_ss["weight_bytes"])  # type: ignore[call-overload]
    bw = max(float(r["read_bw"]) for r in ours)  # type: ignore[arg-type]
    if peers:  # measured again after the peers: the best seen is nearest the machine's bound
        bw_after = read_bandwidth()
        rounds[-1]["read_gb_s_after_peers"] = bw_after / 1e9
        bw = max(bw, bw_after)
    wp = min(float(r["weight_pass_s"]) for r in ours)  # type: ignore[arg-type]
    ss = float(best_ss["decode_tok_s"])  # type: ignore[arg-type]
    res: dict[str, object] = {"threads": threads, "repeat": args.repeat, "rounds": rounds,
                              "decode_tok_s": ss, "weight_pass_ms": 1000 * wp, "weight_pass_tok_s": 1 / wp,
                              "weight_mb": wb / 2**20, "mem_read_gb_s": bw / 1e9, "mem_bound_tok_s": bw / wb,
                              "decode_frac_mem_bound": ss * wb / bw}
    outs: list[list[int]] | None = None
    if "output_tok_s" in best_off:
        outs = best_off["outputs"]  # type: ignore[assignment]
        same = all(r["outputs"] == outs for r in ours)
        t_eng, flops, rate = float(best_off["elapsed_s"]), float(best_off["flops"]), float(best_off["gemm_rate"])  # type: ignore[arg-type]
        res.update(requests=len(outs), useful_output_tokens=best_off["useful"], elapsed_s=t_eng,  # type: ignore[arg-type]
                   output_tok_s=best_off["output_tok_s"], gemm_gflop_s=rate / 1e9, workload_tflop=flops / 1e12,
                   roofline_frac=flops / rate / t_eng, preemptions=best_off["preemptions"],
                   outputs_same_every_round=same)
    for name in peers:
        best = _best_of(theirs[name])
        n = peer_requests(args, name, len(outs or []))
        res.update(peer_metrics(name, best, res.get("output_tok_s"), outs[:n] if outs else None,  # type: ignore[arg-type]
                                ss, best_ss["single_output"]))  # type: ignore[arg-type]
        res.update({k: v for k, v in best.items() if k.startswith("hf_b")})
        if f"{name}_decode_tok_s" in res:
            res[f"{name}_decode_frac_mem_bound"] = float(res[f"{name}_decode_tok_s"]) * wb / bw  # type: ignore[arg-type]
    print(f"[{threads} thread(s)] single stream: engine {ss:.1f} tok/s = {100 * ss * wb / bw:.0f}% of the "
          f"memory-read bound {bw / wb:.1f} tok/s ({bw / 1e9:.1f} GB/s, {wb / 2**20:.0f} MiB of weights)")
    if outs is not None:
        print(f"[{threads} thread(s)] engine offline best of {args.repeat}: {res['output_tok_s']:.1f} tok/s, "
              f"{100 * float(res['roofline_frac']):.0f}% of the compute roofline")  # type: ignore[arg-type]
    print(f"\n[{threads} thread(s)]\n" + format_table(res, list(peers)) + "\n", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model config name or path (default: SmolLM2)")
    ap.add_argument("--attention", default="paged")
    ap.add_argument("--threads", type=int, nargs="+", default=[1], help="thread counts, run one after another")
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, nargs=2, default=(32, 512))
    ap.add_argument("--output-len", type=int, nargs=2, default=(32, 256))
    ap.add_argument("--baseline", nargs="*", default=["hf"], help=f"peers to run: any of {list(PEERS)}")
    ap.add_argument("--peer-venv", nargs="*", default=[], metavar="NAME=PATH",
                    help="venv of a peer (default ~/.cache/infer/peers/NAME; hf: this interpreter)")
    ap.add_argument("--hf-batch", type=int, nargs="+", default=[16], help="HF static batch sizes (best is reported)")
    ap.add_argument("--hf-requests", type=int, default=None, help="run HF on the first N requests only (ratio uses tok/s)")
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3, help="single-stream rounds (best kept)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of ours and every peer, the order reversed every other round (best round kept)")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--engine-args", default="{}", help="JSON dict of engine knobs, e.g. '{\"max_num_seqs\": 64}'")
    ap.add_argument("--out", default="outputs/bench_engine.json")
    args = ap.parse_args()
    venvs = dict(kv.split("=", 1) for kv in args.peer_venv)
    peers = {p: make_peer(p, {"venv": venvs.get(p)} if p in venvs else None)
             for p in parse_baselines(args.baseline)}  # a missing venv fails now, not after our run
    res: dict[str, object] = {"argv": sys.argv[1:], "attention": args.attention,
                              "engine_args": json.loads(args.engine_args), "peers": list(peers),
                              "by_threads": {}}
    for t in args.threads:
        res["by_threads"][str(t)] = bench_threads(args, t, peers)  # type: ignore[index]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2))
    for t, r in res["by_threads"].items():  # type: ignore[attr-defined]
        print(f"[{t} thread(s)]\n{format_table(r, list(peers))}\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()

"""``task=bench``: throughput and latency of the configured engine on ``cfg.workload``,
optionally side by side with peer engines (``bench.baseline=hf|vllm|openvino``, several
allowed): the same requests, the same thread count, each peer in its own process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from infer.eval.bench import run_requests, single_stream, warmup
from infer.eval.build_workload import build_workload
from infer.eval.evaluate import cache_dir_of
from infer.eval.memory import weight_mb
from infer.eval.peers import (
    format_table,
    make_job,
    make_peer,
    parse_baselines,
    peer_metrics,
    run_peer,
)
from infer.eval.spec_metrics import format_spec_table


def run(engine: Any, cfg: DictConfig) -> dict[str, Any]:
    """Serve the workload; metrics from every request's timings and the wall clock."""
    b = cfg.bench
    peers = parse_baselines(OmegaConf.to_object(b.baseline) if OmegaConf.is_config(b.baseline) else b.baseline)
    # a missing peer venv fails now, before minutes of our own run
    specs = {p: make_peer(p, _peer_cfg(cfg, p)) for p in peers}
    reqs = build_workload(cfg.workload, engine.tokenizer, cache_dir_of(cfg))
    warmup(engine, reqs, int(b.warmup))
    m = run_requests(engine, reqs, b.request_rate, int(b.seed))
    outs = m.pop("_outputs", None)  # RequestOutput objects: for scripts, not for metrics.json
    m["weight_mb"] = weight_mb(engine.runner.model)  # as stored: quantized schemes shrink it
    spec = cfg.get("spec")
    print(format_spec_table([{"spec": str(spec.name) if spec is not None else "none", **m}]))
    if peers:
        m.update(_side_by_side(engine, cfg, specs, reqs, outs, m))
    return {"task": "bench", "workload": str(cfg.workload.name), **m}


def _peer_cfg(cfg: DictConfig, name: str) -> dict[str, Any]:
    """``bench.peers.<name>`` as a plain dict, with the hf runner's batch size and pad id."""
    node = OmegaConf.select(cfg, f"bench.peers.{name}")
    pc: dict[str, Any] = OmegaConf.to_container(node, resolve=True) if node is not None else {}  # type: ignore[assignment]
    if name == "hf":
        opts = dict(pc.get("options") or {})
        opts.setdefault("batch_size", int(cfg.bench.hf_batch_size or cfg.engine.max_num_seqs))
        pc["options"] = opts
    return pc


def _side_by_side(engine: Any, cfg: DictConfig, specs: dict[str, Any], reqs: list[Any],
                  outs: list[Any], m: dict[str, Any]) -> dict[str, Any]:
    """Run each peer on the same requests (all at t=0) and one single stream; ratios ours / peer
    and greedy equality per request. Ratios of throughput need an offline run of ours."""
    b = cfg.bench
    offline = not b.request_rate and all(r.depends_on is None and r.ignore_eos for r in reqs)
    if not offline:
        print("bench: peers run every request at t=0 to exactly max_tokens; with request_rate, "
              "dependent requests or stops at EOS no throughput ratio is reported")
    res: dict[str, Any] = {"peers": list(specs)}
    n_ss = int(b.single_stream_tokens or 0)
    ss = None
    if n_ss > 0:
        prompt = list(reqs[0].prompt_token_ids[: int(b.single_stream_prompt_len)])
        rate, ss_out = single_stream(engine, prompt, n_ss, int(b.single_stream_rounds))
        res["decode_tok_s"] = rate
        ss = (prompt, n_ss, int(b.single_stream_rounds))
    threads = int(cfg.threads) if cfg.threads else torch.get_num_threads()  # build set it
    tok = engine.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else engine.eos_token_ids[0]
    ours = [list(o.outputs[0].token_ids) for o in outs]
    for name, peer in specs.items():
        if name == "hf":
            peer.options.setdefault("pad_id", int(pad))
        job = make_job(peer, Path(engine.model_path), str(cfg.model.dtype), threads,
                       [(r.prompt_token_ids, r.max_tokens) for r in reqs], ss, int(b.warmup) + 1)
        result = run_peer(peer, job, float(b.peer_timeout_s), _log_dir())
        res.update(peer_metrics(name, result, m["output_tok_s"] if offline else None, ours,
                                res.get("decode_tok_s"), ss_out if ss else None))
    print(format_table({**m, **res}, list(specs)))
    return res


def _log_dir() -> Path | None:
    """<run dir>/peers under run.py (each peer's log lands there); None outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return Path(HydraConfig.get().runtime.output_dir) / "peers"
    except ValueError:  # no Hydra run (tests, notebooks)
        return None

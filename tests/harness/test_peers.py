"""bench.baseline peers: config checks, the JSON protocol through a fake peer (ratios and
per-request greedy equality), the HF peer on a tiny model, and the real vLLM / OpenVINO
peers on SmolLM2 where their venvs are installed (scripts/setup_peers.sh)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from infer import compose_config
from infer.eval import workloads as W
from infer.eval.bench import run_requests
from infer.eval.peers import (
    DEFAULT_PEERS_DIR,
    compare,
    format_table,
    make_job,
    make_peer,
    parse_baselines,
    run_peer,
)
from infer.tasks import bench

FAKE = Path(__file__).parent / "fake_peer.py"
CORPUS = list(range(1000, 3000))
SMALL = {"workload.generator.num_requests": 4, "workload.generator.prompt_len": [4, 12],
         "workload.generator.output_len": [2, 5], "bench.single_stream_tokens": 6,
         "bench.single_stream_prompt_len": 5, "bench.single_stream_rounds": 1, "threads": 1}


def test_parse_baselines() -> None:
    assert parse_baselines("none") == [] and parse_baselines(None) == []
    assert parse_baselines("vllm,openvino") == ["vllm", "openvino"]
    assert parse_baselines(["hf", "vllm", "hf"]) == ["hf", "vllm"]
    with pytest.raises(ValueError, match=r"bench.baseline.*allowed.*openvino"):
        parse_baselines("llamacpp")


def test_missing_peer_venv_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"bench.peers.vllm.venv=.*setup_peers.sh vllm"):
        make_peer("vllm", {"venv": str(tmp_path / "nope")})
    with pytest.raises(FileNotFoundError, match=r"bench.peers.hf.script"):
        make_peer("hf", {"script": str(tmp_path / "missing.py")})


def test_compare_reports_first_difference() -> None:
    assert compare([[1, 2, 3], [4, 5], [6]], [[1, 2, 3], [4, 9], [6, 7]]) == [-1, 1, 1]
    with pytest.raises(ValueError, match="2 outputs for 1 requests"):
        compare([[1]], [[1], [2]])


def _cfg(tiny_cfg: Any, overrides: dict[str, Any]) -> Any:
    from omegaconf import OmegaConf

    cfg = compose_config(["model=tiny", "task=bench", "workload=synthetic"], {**SMALL, **overrides})
    OmegaConf.set_struct(cfg, False)
    cfg.model = tiny_cfg.model  # the tiny engine's model (same dtype)
    return cfg


def test_fake_peer_ratios_and_equality(tiny_engine: Any, tiny_cfg: Any) -> None:
    from infer.eval.build_workload import build_workload
    from infer.eval.evaluate import cache_dir_of

    cfg = _cfg(tiny_cfg, {})
    reqs = build_workload(cfg.workload, tiny_engine.tokenizer, cache_dir_of(cfg))
    ours = [list(o.outputs[0].token_ids) for o in run_requests(tiny_engine, reqs)["_outputs"]]
    table = [[r.prompt_token_ids, o] for r, o in zip(reqs, ours)]
    table[1][1] = [ours[1][0], ours[1][1] + 1] + ours[1][2:]  # request 1 differs at position 1
    cfg = _cfg(tiny_cfg, {"bench.baseline": "vllm", "bench.peers.vllm.venv": sys.prefix,
                          "bench.peers.vllm.script": str(FAKE),
                          "bench.peers.vllm.options": {"table": table, "sec_per_token": 0.01}})
    m = bench.run(tiny_engine, cfg)
    assert m["peers"] == ["vllm"] and m["vllm_version"] == "fake-1"
    assert m["vllm_compared"] == 4 and m["vllm_identical"] == 3
    assert m["vllm_first_diff"] == [-1, 1, -1, -1]
    assert m["vllm_settings"]["cores"] == [min(os.sched_getaffinity(0))]
    # the fake sleeps 10 ms per token: its rate is at most 100 tok/s
    assert 0 < m["vllm_output_tok_s"] <= 100.0
    assert m["speedup_vs_vllm"] == pytest.approx(m["output_tok_s"] / m["vllm_output_tok_s"])
    assert m["decode_speedup_vs_vllm"] == pytest.approx(m["decode_tok_s"] / m["vllm_decode_tok_s"])
    assert m["vllm_single_stream_identical"] is False  # the fake does not know that prompt
    table_md = format_table(m, ["vllm"])
    assert "| vllm |" in table_md and "3/4" in table_md


def test_missing_venv_fails_before_the_run(tiny_engine: Any, tiny_cfg: Any, tmp_path: Path) -> None:
    cfg = _cfg(tiny_cfg, {"bench.baseline": ["hf", "openvino"],
                          "bench.peers.openvino.venv": str(tmp_path / "none")})
    with pytest.raises(FileNotFoundError, match="bench.peers.openvino.venv"):
        bench.run(tiny_engine, cfg)


def test_failing_peer_reports_its_log(tmp_path: Path, tiny_engine: Any) -> None:
    bad = tmp_path / "bad_peer.py"
    bad.write_text("raise SystemExit('peer cannot start: no such device')\n")
    peer = make_peer("hf", {"script": str(bad)})
    job = make_job(peer, tiny_engine.model_path, "float32", 1, [([1, 2, 3], 2)])
    with pytest.raises(RuntimeError, match=r"peer hf exited 1(.|\n)*no such device"):
        run_peer(peer, job)


def test_hf_peer_matches_ours_on_tiny(tiny_engine: Any, tiny_cfg: Any) -> None:
    """The HF transformers peer (a subprocess of this interpreter), batch 1 so no padding:
    its greedy tokens equal ours on every request."""
    cfg = _cfg(tiny_cfg, {"bench.baseline": "hf", "bench.hf_batch_size": 1})
    m = bench.run(tiny_engine, cfg)
    assert m["hf_compared"] == 4 and m["hf_identical"] == 4, m["hf_first_diff"]
    assert m["hf_single_stream_identical"] is True
    assert m["hf_output_tok_s"] > 0 and m["speedup_vs_hf"] > 0 and m["hf_settings"]["batch_size"] == 1


def _needs(peer: str) -> None:
    if not (DEFAULT_PEERS_DIR / peer / "bin" / "python").exists():
        pytest.skip(f"peer venv {DEFAULT_PEERS_DIR / peer} absent: `bash scripts/setup_peers.sh {peer}` "
                    "installs it (a few minutes)")


@pytest.mark.parametrize("peer", [
    "openvino",
    pytest.param("vllm", marks=pytest.mark.slow),  # vLLM's start-up compiles for ~2 min
])
def test_real_peer_matches_ours_on_smollm2(peer: str, smollm2: Any) -> None:
    """The installed peer on SmolLM2 fp32, greedy, 1 thread: same tokens as ours."""
    from pydoc_data import topics

    _needs(peer)
    text = "\n\n".join(topics.topics.values())[:6000]
    reqs = W.synthetic(smollm2.get_tokenizer().encode(text), 3, [8, 24], [4, 8], seed=3)
    work = [(r.prompt_token_ids, r.max_tokens) for r in reqs]
    p = make_peer(peer)
    res = run_peer(p, make_job(p, smollm2.model_path, "float32", 1, work, (work[0][0], 8, 1)))
    ours = run_requests(smollm2.engine, reqs)["_outputs"]
    assert compare([o.outputs[0].token_ids for o in ours], res["offline"]["outputs"]) == [-1] * 3
    assert res["offline"]["output_tokens"] == sum(n for _, n in work)
    assert res["single_stream"]["decode_tok_s"] > 0 and len(res["single_stream"]["output"]) == 8

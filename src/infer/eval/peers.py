"""Peer engines side by side with ours: each peer (vLLM CPU, OpenVINO GenAI, HF transformers)
runs as a subprocess in its OWN venv, so this process never imports them.

The runner scripts live in ``infer/eval/peer_runners/`` and speak the JSON protocol of
``peer_runners/peer_io.py``: token ids in, token ids and timings out. This module resolves a
peer's interpreter and runner, exports the OpenVINO IR once (cached), builds the job, runs
it, and turns the result into metrics: ratios ours / peer and greedy equality per request.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PEERS = ("hf", "vllm", "openvino")
RUNNERS_DIR = Path(__file__).parent / "peer_runners"
RUNNERS = {"hf": "hf_runner.py", "vllm": "vllm_runner.py", "openvino": "openvino_runner.py"}
DEFAULT_PEERS_DIR = Path.home() / ".cache" / "infer" / "peers"
DEFAULT_IR_DIR = DEFAULT_PEERS_DIR / "ir"


@dataclass(frozen=True)
class Peer:
    """One peer engine: ``python`` runs ``script`` with ``job.json result.json``.

    ``venv`` is where ``python`` came from (None: this interpreter); ``ir_dir`` (OpenVINO
    only) is the cache of exported IRs; ``options`` go into the job as peer-specific knobs.
    """

    name: str
    python: Path
    script: Path
    venv: Path | None = None
    ir_dir: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)


def parse_baselines(value: Any) -> list[str]:
    """``bench.baseline`` -> peer names: None/"none" -> [], "vllm", "vllm,openvino" or a list.

    Raises ValueError naming the field and the allowed values for anything else."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [str(x).strip() for x in items if str(x).strip() and str(x).strip() != "none"]
    bad = [n for n in names if n not in PEERS]
    if bad:
        raise ValueError(f"bench.baseline={value!r}: unknown {bad}; allowed: none or any of "
                         f"{list(PEERS)} (a list or comma-separated for several)")
    return list(dict.fromkeys(names))


def make_peer(name: str, cfg: Mapping[str, Any] | None = None) -> Peer:
    """The peer ``name`` from its ``bench.peers.<name>`` config (venv, script, ir_dir, options).

    A missing venv raises FileNotFoundError saying how to install it; ``venv: null`` means
    this interpreter (the default for ``hf``, whose dependencies infer already has)."""
    cfg = dict(cfg or {})
    venv = cfg.get("venv")
    if venv is None and name != "hf":
        venv = str(DEFAULT_PEERS_DIR / name)
    if venv is None:
        python = Path(sys.executable)
    else:
        python = Path(str(venv)).expanduser() / "bin" / "python"
        if not python.exists():
            raise FileNotFoundError(
                f"bench.peers.{name}.venv={venv}: no {python}; install the peer with "
                f"`bash scripts/setup_peers.sh {name}` or point bench.peers.{name}.venv at its venv")
    script = Path(str(cfg["script"])).expanduser() if cfg.get("script") else RUNNERS_DIR / RUNNERS[name]
    if not script.is_file():
        raise FileNotFoundError(f"bench.peers.{name}.script={script}: no such file")
    ir = cfg.get("ir_dir")
    return Peer(name, python, script, Path(str(venv)).expanduser() if venv else None,
                Path(str(ir)).expanduser() if ir else (DEFAULT_IR_DIR if name == "openvino" else None),
                dict(cfg.get("options") or {}))


def cores_for(threads: int) -> list[int]:
    """The first ``threads`` cores this process may run on (peers that pin use these)."""
    avail = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(
        range(os.cpu_count() or 1))
    if threads < 1 or threads > len(avail):
        raise ValueError(f"threads={threads}: must be 1..{len(avail)} (cores available: {avail})")
    return avail[:threads]


def ir_path(model: Path, ir_root: Path) -> Path:
    """Cache folder of the fp32 OpenVINO IR of HF folder ``model`` (keyed by its absolute path)."""
    key = hashlib.sha1(str(Path(model).resolve()).encode()).hexdigest()[:8]
    return Path(ir_root) / f"{Path(model).name}-{key}-fp32"


def ensure_ir(model: Path, venv: Path, ir_root: Path, log: Path | None = None) -> Path:
    """Export ``model`` (HF folder) to an fp32 OpenVINO IR with the venv's optimum-cli, once."""
    out = ir_path(model, ir_root)
    if (out / "openvino_model.xml").exists():
        return out
    cli = Path(venv) / "bin" / "optimum-cli"
    if not cli.exists():
        raise FileNotFoundError(f"bench.peers.openvino.venv={venv}: no optimum-cli; run "
                                "`bash scripts/setup_peers.sh openvino`")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp", dir=out.parent))
    cmd = [str(cli), "export", "openvino", "--model", str(model), "--task",
           "text-generation-with-past", "--weight-format", "fp32", str(tmp)]
    try:
        _run(cmd, _clean_env({"HF_HUB_OFFLINE": "1"}), log or tmp.parent / f"{out.name}.log", 1800,
             "openvino IR export")
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def make_job(peer: Peer, model: Path, dtype: str, threads: int,
             requests: Sequence[tuple[Sequence[int], int]],
             single_stream: tuple[Sequence[int], int, int] | None = None, warmup: int = 2) -> dict[str, Any]:
    """The job JSON (see peer_io.py): ``requests`` are (prompt ids, new tokens) pairs run all
    at once; ``single_stream`` is (prompt ids, new tokens, rounds) or None."""
    job: dict[str, Any] = {
        "peer": peer.name, "model": str(model), "ir_dir": None, "dtype": dtype,
        "threads": int(threads), "cores": cores_for(int(threads)), "warmup": int(warmup),
        "requests": [{"prompt_token_ids": list(map(int, p)), "max_tokens": int(n)} for p, n in requests],
        "single_stream": None, "options": dict(peer.options),
    }
    if single_stream is not None:
        p, n, rounds = single_stream
        job["single_stream"] = {"prompt_token_ids": list(map(int, p)), "max_tokens": int(n),
                                "rounds": int(rounds)}
    return job


def run_peer(peer: Peer, job: dict[str, Any], timeout_s: float = 3600,
             log_dir: Path | None = None) -> dict[str, Any]:
    """Run ``peer`` on ``job`` in a subprocess; return its result dict.

    For OpenVINO the IR of ``job["model"]`` is exported first when not cached. The peer's
    output goes to ``<log_dir or a temp dir>/<peer>.log``; a failing peer raises RuntimeError
    with the log's tail."""
    with tempfile.TemporaryDirectory(prefix=f"peer-{peer.name}-") as d:
        logs = Path(log_dir) if log_dir else Path(d)
        logs.mkdir(parents=True, exist_ok=True)
        if peer.name == "openvino" and job.get("ir_dir") is None and peer.venv is not None:
            assert peer.ir_dir is not None
            job = {**job, "ir_dir": str(ensure_ir(Path(job["model"]), peer.venv, peer.ir_dir,
                                                  logs / "openvino_export.log"))}
        jp, rp = Path(d) / "job.json", Path(d) / "result.json"
        jp.write_text(json.dumps(job))
        env = _clean_env({"OMP_NUM_THREADS": str(job["threads"]), "HF_HUB_OFFLINE": "1",
                          "TOKENIZERS_PARALLELISM": "false"})
        _run([str(peer.python), str(peer.script), str(jp), str(rp)], env,
             logs / f"{peer.name}.log", timeout_s, f"peer {peer.name}")
        if not rp.exists():
            raise RuntimeError(f"peer {peer.name} exited 0 but wrote no result ({peer.script})")
        return dict(json.loads(rp.read_text()))


def compare(ours: Sequence[Sequence[int]], theirs: Sequence[Sequence[int]]) -> list[int]:
    """Per request: -1 when the token ids are identical, else the first differing position."""
    if len(ours) != len(theirs):
        raise ValueError(f"peer returned {len(theirs)} outputs for {len(ours)} requests")
    out = []
    for a, b in zip(ours, theirs):
        a, b = list(a), list(b)
        diff = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        out.append(-1 if diff is None and len(a) == len(b) else (diff if diff is not None else min(len(a), len(b))))
    return out


def peer_metrics(name: str, result: Mapping[str, Any], ours_tok_s: float | None = None,
                 ours_outputs: Sequence[Sequence[int]] | None = None,
                 ours_decode_tok_s: float | None = None,
                 ours_single_output: Sequence[int] | None = None) -> dict[str, Any]:
    """Flat metrics for one peer, keys prefixed with its name.

    ``<p>_output_tok_s`` (useful tok/s offline), ``speedup_vs_<p>`` (ours / peer),
    ``<p>_identical`` / ``<p>_compared`` and ``<p>_first_diff`` (per request, -1 = identical),
    ``<p>_decode_tok_s``, ``decode_speedup_vs_<p>``, ``<p>_single_stream_identical``,
    ``<p>_startup_s``, ``<p>_version``, ``<p>_settings``."""
    m: dict[str, Any] = {f"{name}_version": str(result.get("version")),
                         f"{name}_startup_s": float(result.get("startup_s") or 0.0),
                         f"{name}_settings": dict(result.get("settings") or {})}
    off = result.get("offline")
    if off:
        m[f"{name}_elapsed_s"] = float(off["elapsed_s"])
        m[f"{name}_output_tok_s"] = float(off["output_tok_s"])
        if ours_tok_s is not None:
            m[f"speedup_vs_{name}"] = ours_tok_s / float(off["output_tok_s"])
        if ours_outputs is not None:
            diffs = compare(ours_outputs, off["outputs"])
            m[f"{name}_identical"] = sum(d < 0 for d in diffs)
            m[f"{name}_compared"] = len(diffs)
            m[f"{name}_first_diff"] = diffs
    ss = result.get("single_stream")
    if ss:
        m[f"{name}_decode_tok_s"] = float(ss["decode_tok_s"])
        if ours_decode_tok_s is not None:
            m[f"decode_speedup_vs_{name}"] = ours_decode_tok_s / float(ss["decode_tok_s"])
        if ours_single_output is not None:
            m[f"{name}_single_stream_identical"] = list(ours_single_output) == list(ss["output"])
    return m


def format_table(metrics: Mapping[str, Any], peers: Sequence[str], ours: str = "infer") -> str:
    """A markdown table: one row per engine, offline and single-stream tok/s, ratios, equality."""
    rows = ["| engine | offline tok/s | ours / it | single-stream tok/s | ours / it | greedy identical |",
            "|---|---|---|---|---|---|",
            f"| {ours} | {_f(metrics.get('output_tok_s'))} | | {_f(metrics.get('decode_tok_s'))} | | |"]
    for p in peers:
        same = (f"{metrics[f'{p}_identical']}/{metrics[f'{p}_compared']}"
                if f"{p}_compared" in metrics else "")
        if f"{p}_single_stream_identical" in metrics:
            same += (" + " if same else "") + ("single yes" if metrics[f"{p}_single_stream_identical"] else "single NO")
        rows.append(f"| {p} | {_f(metrics.get(f'{p}_output_tok_s'))} | {_f(metrics.get(f'speedup_vs_{p}'), 2)} | "
                    f"{_f(metrics.get(f'{p}_decode_tok_s'))} | {_f(metrics.get(f'decode_speedup_vs_{p}'), 2)} | {same} |")
    return "\n".join(rows)


def _f(v: Any, nd: int = 1) -> str:
    return "" if v is None else f"{float(v):.{nd}f}"


def _clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment without anything that would make another venv's python see ours."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def _run(cmd: list[str], env: Mapping[str, str], log: Path, timeout_s: float, what: str) -> None:
    """Run ``cmd`` with stdout+stderr to ``log``; a non-zero exit or a timeout raises RuntimeError."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, env=dict(env), stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, timeout=timeout_s, check=False).returncode
        except subprocess.TimeoutExpired:
            rc = None
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        status = f"timed out after {timeout_s:.0f} s" if rc is None else f"exited {rc}"
        raise RuntimeError(f"{what} {status} ({' '.join(cmd[:2])}); last lines of {log}:\n{tail}")


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m infer.eval.peers export-ir [--model HF_FOLDER] --openvino-venv V --ir-dir D``:
    export (once) the OpenVINO IR the openvino peer will use for that model."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m infer.eval.peers")
    ap.add_argument("command", choices=["export-ir"])
    ap.add_argument("--model", default=None, help="HF folder / model.path; default: the embedded model")
    ap.add_argument("--openvino-venv", default=str(DEFAULT_PEERS_DIR / "openvino"))
    ap.add_argument("--ir-dir", default=str(DEFAULT_IR_DIR))
    a = ap.parse_args(argv)
    from infer.models.sources import resolve_model_path

    model = resolve_model_path(a.model)
    print(ensure_ir(model, Path(a.openvino_venv).expanduser(), Path(a.ir_dir).expanduser()))


if __name__ == "__main__":
    main()

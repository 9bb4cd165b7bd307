"""run.py under launchers: torchrun on one node, two torchrun agents as two "nodes" meeting
through c10d rendezvous on 127.0.0.1, and SLURM / submitit task variables -> torch's.

Oracle: the one-process LLM's greedy tokens for token_task.PROMPTS (identical token ids in
rank 0's metrics.json); ranks > 0 must write nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from token_task import PROMPTS

from infer import LLM
from infer.parallel.comm.local import free_port
from infer.parallel.launch import first_node, launcher_env, quiet_worker_overrides
from infer.sampling_params import SamplingParams

RUN = str(Path(__file__).resolve().parents[2] / "run.py")
MAX_TOKENS = 5


@pytest.fixture(scope="module")
def folder(tiny_checkpoint) -> str:  # type: ignore[no-untyped-def]
    return str(tiny_checkpoint("llama"))


@pytest.fixture(scope="module")
def ref(folder: str) -> str:
    """The one-process tokens, formatted as token_task writes them."""
    llm = LLM(model=folder, threads=1)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS],
                        SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS), use_tqdm=False)
    return " | ".join(" ".join(map(str, o.outputs[0].token_ids)) for o in outs)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), *sys.path])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _args(folder: str, run_dir: Path) -> list[str]:
    return [RUN, "model=hf", f"model.path={folder}", "task.fn=token_task.run",
            f"task.max_tokens={MAX_TOKENS}", "threads=1", "parallel=tp", "parallel.tp_size=2",
            "parallel.comm=gloo", f"hydra.run.dir={run_dir}"]


def _torchrun(*opts: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *opts]


def _check_run(tmp_path: Path, run_dir: Path, ref: str) -> None:
    assert json.loads((run_dir / "metrics.json").read_text())["tokens"] == ref
    # one run folder, written by rank 0 alone
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".log")) == ["run"]


def test_torchrun_one_node_equals_one_process(folder: str, ref: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    out = subprocess.run(_torchrun("--nproc-per-node", "2", *_args(folder, run_dir)),
                         cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=240,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    _check_run(tmp_path, run_dir, ref)
    assert out.stdout.count("metrics:") == 1  # rank 0 prints, the worker does not


def test_two_nodes_by_rendezvous_equal_one_process(folder: str, ref: str, tmp_path: Path) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    procs = []
    for node in range(2):
        log = open(tmp_path / f"node{node}.log", "w")  # noqa: SIM115 (closed below)
        cmd = _torchrun("--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node),
                        "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
                        "--rdzv-id", "infer-test", *_args(folder, tmp_path / "run"))
        procs.append((subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=log,
                                       stderr=subprocess.STDOUT), log))
    for p, log in procs:
        try:
            p.wait(timeout=240)
        finally:
            if p.poll() is None:
                p.kill()
            log.close()
    logs = [(tmp_path / f"node{i}.log").read_text()[-3000:] for i in range(2)]
    assert [p.returncode for p, _ in procs] == [0, 0], logs
    _check_run(tmp_path, tmp_path / "run", ref)


def test_submitit_sweep_point_runs_two_tasks(folder: str, ref: str, tmp_path: Path) -> None:
    """The same path as hydra/launcher=slurm: one sweep point, tasks_per_node=2 processes."""
    args = [a for a in _args(folder, tmp_path / "run") if not a.startswith("hydra.run.dir")]
    cmd = [sys.executable, *args[:1], "-m", "hydra/launcher=local",
           "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={tmp_path / 'sweep'}", *args[1:]]
    out = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True,
                         timeout=240, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / "sweep" / "0" / "metrics.json").read_text())["tokens"] == ref


SLURM = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "12345",
         "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS_PER_NODE": "2",
         "SLURM_JOB_NODELIST": "gpu-[07-08]"}


def test_slurm_task_maps_to_torch_env() -> None:
    assert launcher_env(SLURM) == {
        "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "gpu-07", "MASTER_PORT": str(20000 + 12345 % 20000)}
    # set variables win; torchrun's RANK means torchrun already did it; one task needs nothing
    assert launcher_env({**SLURM, "MASTER_PORT": "999"}).get("MASTER_PORT") is None
    assert launcher_env({**SLURM, "RANK": "0"}) == {}
    assert launcher_env({**SLURM, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) == {}
    assert launcher_env({}) == {}
    # an unparsable node list falls back to the launch node's address
    odd = {**SLURM, "SLURM_JOB_NODELIST": "[weird", "SLURM_LAUNCH_NODE_IPADDR": "10.0.0.5"}
    assert launcher_env(odd)["MASTER_ADDR"] == "10.0.0.5"
    with pytest.raises(RuntimeError, match="SLURM_JOB_NODELIST"):
        launcher_env({**SLURM, "SLURM_JOB_NODELIST": "[weird"})
    # "2(x2)" form of the per-node count, and no per-node count at all
    per = {k: v for k, v in SLURM.items() if k != "SLURM_NTASKS_PER_NODE"}
    assert launcher_env({**per, "SLURM_TASKS_PER_NODE": "2(x2)"})["LOCAL_WORLD_SIZE"] == "2"
    assert launcher_env(per)["LOCAL_WORLD_SIZE"] == "2"


def test_submitit_local_task_maps_to_torch_env() -> None:
    env = {"SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1",
           "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_JOB_ID": "4242"}
    assert launcher_env(env) == {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
                                 "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                 "MASTER_PORT": "24242"}


@pytest.mark.parametrize("nodes,first", [
    ("n1", "n1"), ("n1,n2", "n1"), ("gpu[03-05,9]", "gpu03"), ("a-[1,4]-x,b1", "a-1-x"),
    ("node[12]", "node12"), ("", None), ("[1-2]", None),
])
def test_first_node(nodes: str, first: str | None) -> None:
    assert first_node(nodes) == first


def test_workers_get_quiet_hydra_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("RANK", "SLURM_PROCID", "SUBMITIT_LOCAL_GLOBALID"):
        monkeypatch.delenv(k, raising=False)
    assert quiet_worker_overrides() == []
    monkeypatch.setenv("RANK", "1")
    assert "hydra.output_subdir=null" in quiet_worker_overrides()
    monkeypatch.setenv("RANK", "0")
    assert quiet_worker_overrides() == []

"""Every option of every config group composes and builds; bad choices fail clearly.

Options are discovered from the YAML files in configs/<group>/ (the set of files IS the
registry), so a new option is covered by this test the moment its file exists.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import get_method, instantiate

from infer import LLM, SamplingParams, build, compose_config
from infer.config_loader import config_dir, group_options
from infer.parallel.executor import start_engine

REPO = Path(__file__).resolve().parents[2]
GROUPS = sorted(p.name for p in config_dir().iterdir() if p.is_dir() and any(p.glob("*.yaml")))
CASES = [(g, o) for g in GROUPS for o in group_options(g)]
# test-sized engine (the 2 GiB KV default is for serving, not for a build check)
SMALL_KV = {"engine.max_model_len": 512, "engine.kv_cache_tokens": 4096}


def _generate(engine, ids: list[int], n: int) -> list[int]:  # type: ignore[no-untyped-def]
    """Drive the built engine directly (no LLM wrapper): n greedy tokens for one prompt."""
    rid = engine.add_request(None, ids, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))
    while engine.has_unfinished():
        for out in engine.step():
            if out.request_id == rid and out.finished:
                return out.outputs[0].token_ids
    raise AssertionError("request never finished")


def test_groups_discovered() -> None:
    """The defaults list and the folders agree (a group without options would be a typo)."""
    for g in ("model", "attention", "quant", "spec", "parallel", "kernels", "workload",
              "eval", "logger", "task", "experiment"):
        assert g in GROUPS and group_options(g), f"config group {g!r} has no options"


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_option_composes_and_builds(group, option, tiny_checkpoint, smollm2, tmp_path, monkeypatch, request):  # type: ignore[no-untyped-def]
    values = dict(SMALL_KV)
    overrides = [f"{group}={option}"]
    if group == "model" and option == "smollm2":
        # the default model: the session's LLM() is exactly compose(defaults) + build
        cfg, engine = smollm2.config, smollm2.engine
        assert cfg.model.name == compose_config([]).model.name
    else:
        if group == "model" and option == "hf":
            values["model.path"] = str(tiny_checkpoint("llama", perturb=False))
        elif group not in ("model", "experiment"):
            overrides.append("model=tiny")
        cfg = compose_config(overrides, values)
        # several ranks: this process becomes rank 0 and starts the others (as LLM() does)
        engine, executor = start_engine(cfg, build)
        if executor is not None:
            request.addfinalizer(executor.shutdown)
    assert cfg.get(group) is not None or group == "experiment"
    assert engine.model_path.is_dir()
    # the built engine serves a request
    assert len(_generate(engine, [1, 2, 3, 4], 2)) == 2

    # parts that build() does not consume are still resolvable / instantiable
    get_method(cfg.task.fn)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    sink = instantiate(cfg.logger.sink)
    sink.log_summary({"output_tok_s": 1.0}, tmp_path / "run")
    sink.finish()
    del engine
    gc.collect()


@pytest.mark.parametrize("group", ["attention", "quant", "model"])
def test_unknown_option_lists_valid_ones(group: str) -> None:
    with pytest.raises(Exception) as ei:
        compose_config([f"{group}=nope"])
    msg = str(ei.value)
    assert "nope" in msg
    for opt in group_options(group):
        assert opt in msg, f"error for {group}=nope does not list the valid option {opt!r}"


def test_unknown_option_in_llm_lists_valid_ones() -> None:
    with pytest.raises(Exception) as ei:
        LLM(model="tiny", attention="nope")
    for opt in group_options("attention"):
        assert opt in str(ei.value)


def test_unknown_option_on_command_line_lists_valid_ones(tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = subprocess.run(
        [sys.executable, "run.py", "attention=nope", f"hydra.run.dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
    )
    assert r.returncode != 0
    err = r.stdout + r.stderr
    assert "attention/nope" in err
    for opt in group_options("attention"):
        assert opt in err
    assert not (tmp_path / "metrics.json").exists()


def test_unknown_engine_knob_fails_clearly() -> None:
    with pytest.raises(ValueError) as ei:
        LLM(model="tiny", max_num_seqz=4)
    msg = str(ei.value)
    assert "max_num_seqz" in msg and "max_num_seqs" in msg  # names it and lists the valid keys


def test_unknown_dtype_fails_clearly() -> None:
    with pytest.raises(ValueError, match="float32"):
        LLM(model="tiny", dtype="float33")

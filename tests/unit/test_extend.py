"""Extending without forking: a backend defined in the test folder, named by ``_target_`` in a
YAML in our own config dir (on Hydra's searchpath), runs without editing ``infer``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from infer import LLM, SamplingParams

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TOY_YAML = """\
# A user's own attention backend (not part of infer).
name: toy                     # label used in logs and results tables
block_size: null              # contiguous KV, like attention=torch
backend:
  _target_: toy_attention.CountingBackend  # the user's class
cache:
  _target_: infer.cache.contiguous.ContiguousKVCacheManager  # reuse a stock cache manager
"""


def _user_config_dir(tmp_path: Path) -> Path:
    d = tmp_path / "my_configs"
    (d / "attention").mkdir(parents=True)
    (d / "attention" / "toy.yaml").write_text(TOY_YAML)
    return d


def test_own_backend_via_searchpath_matches_reference(tmp_path: Path) -> None:
    import toy_attention

    search = f"hydra.searchpath=[file://{_user_config_dir(tmp_path)}]"
    sp = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    prompts = ["Hello there", "The capital of France is"]
    toy_attention.CountingBackend.calls = 0
    toy = LLM(model="tiny", attention="toy", overrides=[search], kv_cache_tokens=4096)
    assert toy.config.attention.name == "toy"
    got = [o.outputs[0].token_ids for o in toy.generate(prompts, sp, use_tqdm=False)]
    assert toy_attention.CountingBackend.calls > 0
    ref = LLM(model="tiny", attention="torch", kv_cache_tokens=4096)
    want = [o.outputs[0].token_ids for o in ref.generate(prompts, sp, use_tqdm=False)]
    assert got == want


def test_own_backend_from_command_line(tmp_path: Path) -> None:
    cfg_dir = _user_config_dir(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(
        [sys.executable, "run.py", "model=tiny", "attention=toy", "task.max_tokens=2",
         f"hydra.searchpath=[file://{cfg_dir}]", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
    )
    assert r.returncode == 0, r.stderr
    assert "attention=toy" in r.stdout
    assert (tmp_path / "run" / "metrics.json").exists()

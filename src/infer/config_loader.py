"""Compose the Hydra config outside run.py (notebooks, tests, LLM(...))."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf, open_dict


def config_dir() -> Path:
    """$INFER_CONFIG_DIR or the repo's configs/ folder."""
    env = os.environ.get("INFER_CONFIG_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "configs"


def group_options(group: str) -> list[str]:
    """The options of a config group = the YAML files in its folder."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def compose_config(overrides: list[str] | None = None, values: dict[str, Any] | None = None) -> DictConfig:
    """Compose configs/config.yaml with Hydra overrides, then set dotted ``values``
    (no override grammar, so any Python value works). Unknown keys raise with the valid ones."""
    gh = GlobalHydra.instance()
    if gh.is_initialized():
        gh.clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides or []))
    for key, val in (values or {}).items():
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        # keys(), not `in`: OmegaConf's `in` is False for a key whose value is still
        # missing (???), which is exactly the case for model.path under model=hf
        if not isinstance(parent, DictConfig) or leaf not in parent.keys():  # noqa: SIM118
            allowed = sorted(parent.keys()) if isinstance(parent, DictConfig) else []
            raise ValueError(f"unknown option {key!r}; valid keys here: {allowed}")
        with open_dict(cfg):
            OmegaConf.update(cfg, key, val, merge=False)
    return cfg

"""Fixtures for the quantization tests: an MHA tiny model, the tiny GQA folder
(calibration settings: quant_settings.py)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def mha_tiny(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A tiny Llama without GQA (num_kv_heads == num_heads), so o_proj's input is foldable
    into v_proj's rows; untied LM head; norms perturbed away from 1."""
    import transformers as tf

    from infer.models.tiny import _COMMON

    out = tmp_path_factory.mktemp("tiny-mha")
    torch.manual_seed(1)
    cfg = tf.LlamaConfig(**{**_COMMON, "num_key_value_heads": 4}, tie_word_embeddings=False)
    tf.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(str(out))
    for f in tokenizer_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("chat_template.jinja", "special_tokens_map.json"):
            shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="session")
def tiny_folder(tiny_checkpoint: Callable[..., Path]) -> Path:
    """The tiny GQA Llama (tied embeddings) with perturbed norms."""
    return tiny_checkpoint("llama", perturb=True)

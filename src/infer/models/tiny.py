"""Tiny random-weight checkpoints of each supported family, for fast tests.

They use the default model's tokenizer (vocab 49152) so text prompts work.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

TINY_FAMILIES = ("llama", "llama3", "mistral", "qwen2", "qwen3")

_COMMON = {
    "vocab_size": 49152,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    # larger than the usual 0.02 so logits are peaked and greedy ties are implausible
    "initializer_range": 0.1,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def tiny_config(family: str):  # type: ignore[no-untyped-def]
    """A transformers config for the tiny preset of ``family``."""
    import transformers as tf

    if family == "llama":
        return tf.LlamaConfig(**_COMMON, tie_word_embeddings=True)
    if family == "llama3":
        rope = {
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 256,
        }
        cfg = tf.LlamaConfig(**_COMMON, tie_word_embeddings=False)
        if hasattr(cfg, "rope_parameters"):
            cfg.rope_parameters = rope
        else:
            cfg.rope_scaling = rope
            cfg.rope_theta = rope["rope_theta"]
        return cfg
    if family == "mistral":
        return tf.MistralConfig(**_COMMON, sliding_window=None, tie_word_embeddings=False)
    if family == "qwen2":
        return tf.Qwen2Config(**_COMMON, tie_word_embeddings=True)
    if family == "qwen3":
        return tf.Qwen3Config(**_COMMON, head_dim=32, tie_word_embeddings=False)
    raise ValueError(f"unknown tiny family {family!r}; available: {TINY_FAMILIES}")


def make_tiny_checkpoint(out: Path, family: str, tokenizer_dir: Path, seed: int = 0) -> None:
    """Write a random-weights HF folder (safetensors + config + tokenizer) to ``out``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.float32)
    model.save_pretrained(str(out), safe_serialization=True)
    for f in tokenizer_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("chat_template.jinja", "special_tokens_map.json"):
            shutil.copy(f, out / f.name)

"""A .gguf model.path is converted once per CONTENT: a different or updated file under the
same name gets its own HF folder (and so its own calibration caches); the same bytes under
another path reuse the conversion."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file
from tiny_gguf import write_tiny_gguf

from infer.models.sources import resolve_model_path
from infer.quant.calibration import cache_path


def embedding(folder: Path) -> torch.Tensor:
    return load_file(str(folder / "model.safetensors"))["model.embed_tokens.weight"]


def test_same_name_new_bytes_is_a_new_conversion(tmp_path: Path) -> None:
    gguf = tmp_path / "models" / "model.gguf"
    gguf.parent.mkdir()
    cache = tmp_path / "cache"
    first = write_tiny_gguf(gguf, seed=0)
    folder_a = resolve_model_path(str(gguf), cache)
    assert torch.equal(embedding(folder_a), torch.from_numpy(first["token_embd.weight"]))

    second = write_tiny_gguf(gguf, seed=1)  # an updated file: same name, same size, new weights
    folder_b = resolve_model_path(str(gguf), cache)
    assert folder_b != folder_a
    assert torch.equal(embedding(folder_b), torch.from_numpy(second["token_embd.weight"]))
    assert not torch.equal(embedding(folder_a), embedding(folder_b))
    # caches keyed by the model folder follow the content
    settings = {"num_seqs": 4}
    assert cache_path(cache, "awq", folder_a, settings) != cache_path(cache, "awq", folder_b, settings)

    # the same bytes elsewhere under the same name: the existing conversion is reused
    copy = tmp_path / "elsewhere" / "model.gguf"
    copy.parent.mkdir()
    shutil.copy(gguf, copy)
    assert resolve_model_path(str(copy), cache) == folder_b

"""Reading HF-format checkpoints: safetensors files (single or sharded), one tensor at a time.

Pickle-based ``.bin`` checkpoints are refused: unpickling untrusted files can run code.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete, corrupt or does not match the model."""


def safetensors_files(folder: Path) -> list[Path]:
    """The safetensors shards of an HF folder (via the index when sharded)."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"corrupt shard index {index}: {e}") from e
        files = sorted({folder / f for f in weight_map.values()})
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"shards listed in {index.name} are missing: {missing}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        if list(folder.glob("*.bin")) or list(folder.glob("*.pt")):
            raise CheckpointError(
                f"{folder} has only pickle (.bin/.pt) weights; infer loads safetensors or GGUF only "
                "(unpickling untrusted files can execute code). Convert with "
                "`save_pretrained(..., safe_serialization=True)`."
            )
        raise CheckpointError(f"no *.safetensors weights in {folder}")
    return files


def iter_safetensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) pairs lazily (memory-mapped; no second full copy of the model)."""
    for f in safetensors_files(folder):
        try:
            handle = safe_open(str(f), framework="pt", device="cpu")
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise CheckpointError(f"cannot read {f}: corrupt or truncated safetensors ({e})") from e
        with handle:
            for name in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                try:
                    t = handle.get_tensor(name)
                except Exception as e:
                    raise CheckpointError(f"cannot read tensor {name!r} from {f}: {e}") from e
                yield name, t

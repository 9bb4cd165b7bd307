"""Turn a ``workload`` config into requests: instantiate its ``generator`` (a ``_partial_``
function of infer.eval.workloads) and pass the runtime arguments it asks for."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from infer.eval.data import corpus_ids, load_text
from infer.eval.workloads import Request


def build_workload(workload: DictConfig, tokenizer: Any, cache_dir: Path) -> list[Request]:
    """Requests of ``workload`` (``workload.generator`` + ``workload.data`` for corpus ones)."""
    if "generator" not in workload:
        raise ValueError(f"workload {workload.get('name')!r} has no generator; pick e.g. workload=synthetic")
    fn = instantiate(workload.generator)
    params = inspect.signature(fn.func if hasattr(fn, "func") else fn).parameters
    kwargs: dict[str, Any] = {}
    if "tokenizer" in params:
        kwargs["tokenizer"] = tokenizer
    if "corpus_ids" in params:
        text = load_text(str(workload.get("data", "builtin:pydoc")), cache_dir)
        kwargs["corpus_ids"] = corpus_ids(tokenizer, text)
    reqs = fn(**kwargs)
    if not reqs:
        raise ValueError(f"workload {workload.get('name')!r} produced no requests")
    return reqs

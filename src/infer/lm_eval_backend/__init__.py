"""lm-evaluation-harness backend: the ``infer`` model (``InferLM``) and the ``infer-lm-eval``
command (lm-eval's own CLI with ``--model infer`` available)."""

from __future__ import annotations

from typing import Any


def register() -> None:
    """Make ``--model infer`` known to lm-eval's registry (importing the model registers it)."""
    import infer.lm_eval_backend.model  # noqa: F401


def __getattr__(name: str) -> Any:  # lazy: importing lm_eval is slow, keep `import infer` fast
    if name == "InferLM":
        from infer.lm_eval_backend.model import InferLM

        return InferLM
    raise AttributeError(name)

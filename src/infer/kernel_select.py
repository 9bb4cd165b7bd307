"""Pick an ``infer_kernels`` implementation for a device: the one bridge from infer to kernels.

Implementation names: ``torch`` (pure torch; runs anywhere), ``triton`` (the Triton
launchers), ``cpp`` (the C++ CPU model ops of ``infer.layers.cpu_ops``; resolved per op by
``infer.layers.ops``, since only the model ops have one) and ``auto`` (Triton on CUDA, torch
elsewhere here; ``infer.layers.ops`` refines auto on CPU to cpp where it exists).

Triton without CUDA runs only under the Triton interpreter (numpy on CPU: correct, very
slow, for verification). ``@triton.jit`` reads ``TRITON_INTERPRET`` when a kernel is
*defined*, i.e. when its module is imported, so ``triton_op`` switches the interpreter on
before the first kernel import and fails clearly if a kernel module was already imported
in compiled (GPU-only) mode.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

import torch
from infer_kernels import get_op

IMPL_CHOICES = ("auto", "torch", "triton", "cpp")

log = logging.getLogger(__name__)


def resolve_impl(impl: str, device: torch.device, what: str = "kernels.impl") -> str:
    """``auto`` -> ``triton`` on CUDA, ``torch`` elsewhere; ``torch``/``triton``/``cpp`` unchanged.

    Raises ValueError naming ``what`` and the valid choices for anything else.
    """
    if impl not in IMPL_CHOICES:
        raise ValueError(f"unknown {what} {impl!r}; valid: {', '.join(IMPL_CHOICES)}")
    if impl == "auto":
        return "triton" if device.type == "cuda" else "torch"
    return impl


def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _check_interpreted(fn: Callable) -> None:
    """Raise if ``fn``'s module defined its kernels in compiled mode (they cannot run on CPU)."""
    from triton.runtime.jit import JITFunction

    module = sys.modules.get(fn.__module__)
    compiled = [k for k, v in vars(module).items() if isinstance(v, JITFunction)] if module else []
    if compiled:
        raise RuntimeError(
            f"Triton kernel module {fn.__module__} was imported without TRITON_INTERPRET=1, so "
            f"its kernels ({', '.join(compiled)}) are GPU-only and cannot run on CPU. Set "
            "TRITON_INTERPRET=1 before anything imports infer_kernels' Triton modules, or use "
            "kernels=torch / a non-Triton attention backend on CPU."
        )


def triton_op(name: str, device: torch.device) -> Callable:
    """The Triton launcher of op ``name``, runnable on ``device`` (interpreter off CUDA)."""
    if device.type != "cuda":
        if not _interpreter_on():
            log.warning(
                "Triton on %s: running under the Triton interpreter (slow; verification only)",
                device.type,
            )
            os.environ["TRITON_INTERPRET"] = "1"
        fn = get_op(name, "triton")
        _check_interpreted(fn)
        return fn
    return get_op(name, "triton")

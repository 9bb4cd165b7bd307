"""Input validation shared by launchers and references (torch only, no Triton).

Every check raises ``ValueError`` naming the argument, what was expected and what was
given, so a bad call from the engine fails with a message that says how to fix it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# KV-cache element types that carry a per-token-per-head scale; value = largest code.
QUANT_KV_QMAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}


def _fmt(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(
    name: str,
    t: object,
    *,
    ndim: int | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    shape: Sequence[int | None] | None = None,
) -> torch.Tensor:
    """Validate type, rank, dtype and (partially) shape; ``None`` in ``shape`` = any size."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{name} dtype must be one of [{_fmt(dtypes)}], got {t.dtype}")
    if shape is not None:
        ok = t.dim() == len(shape) and all(s is None or s == d for s, d in zip(shape, t.shape))
        if not ok:
            want = tuple("*" if s is None else s for s in shape)
            raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    return t


def check_last_dim_contiguous(name: str, t: torch.Tensor) -> None:
    """Kernels index the last dim with unit stride (vectorized loads)."""
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(
            f"{name} must have a contiguous last dim (stride 1), got strides {t.stride()}"
        )


def check_same_device(**tensors: torch.Tensor | None) -> None:
    devs = {k: v.device for k, v in tensors.items() if v is not None}
    if len(set(devs.values())) > 1:
        raise ValueError(f"all tensors must be on one device, got {devs}")


def check_kv_cache(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
) -> bool:
    """Validate a paged cache pair; return True when it is quantized (int8 / fp8 + scales)."""
    allowed = (*FLOAT_DTYPES, *QUANT_KV_QMAX)
    check_tensor("k_cache", k_cache, ndim=4, dtypes=allowed)
    check_tensor("v_cache", v_cache, shape=tuple(k_cache.shape), dtypes=(k_cache.dtype,))
    check_last_dim_contiguous("k_cache", k_cache)
    check_last_dim_contiguous("v_cache", v_cache)
    quantized = k_cache.dtype in QUANT_KV_QMAX
    if quantized:
        if k_scale is None or v_scale is None:
            raise ValueError(
                f"k_scale and v_scale are required for a {k_cache.dtype} cache "
                "(float32 [num_blocks, block_size, num_kv_heads])"
            )
        want = tuple(k_cache.shape[:3])
        check_tensor("k_scale", k_scale, shape=want, dtypes=(torch.float32,))
        check_tensor("v_scale", v_scale, shape=want, dtypes=(torch.float32,))
    elif k_scale is not None or v_scale is not None:
        raise ValueError(
            f"k_scale/v_scale are only valid for int8/fp8 caches, cache is {k_cache.dtype}"
        )
    return quantized


def is_pow2(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0

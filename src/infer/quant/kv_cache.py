"""KV-cache quantization (top-level ``kv_cache_dtype=auto|int8|fp8``).

A layer's cache is ``(k_cache, v_cache)`` in the model dtype, or, quantized,
``(k_cache, v_cache, k_scale, v_scale)``: codes int8 / float8_e4m3fn [NB, BS, Hk, D] and fp32
scales [NB, BS, Hk], one per token per head, symmetric: ``x ~= code * scale`` with
``scale = amax / 127`` (int8) or ``amax / 448`` (fp8) over the head's D values (the layout and
rounding of ``infer_kernels.store_kvcache``, whose Triton kernels read it natively).
The torch attention paths store with :func:`store_kv` and dequantize the blocks they gather
with :func:`dequantize`; a path that attends to a step's fresh k/v without reading them back
from the cache first passes them through :func:`as_stored`, so every attention read of a token
sees the same values whatever the chunking, preemption or prefix hits (lossless w.r.t. itself); KV memory per token drops from 4 (fp32) or 2 (bf16) bytes per value to
1 plus 4 bytes per head (D=64: 1.06 bytes per value).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from infer_kernels.reference import quantize_last_dim


class KVLayer(NamedTuple):
    """One layer's cache in the model dtype (shapes chosen by the attention backend)."""

    k: torch.Tensor
    v: torch.Tensor


class QuantizedKVLayer(NamedTuple):
    """One layer's int8 / fp8 cache: codes [NB, BS, Hk, D] and fp32 scales [NB, BS, Hk]."""

    k: torch.Tensor
    v: torch.Tensor
    k_scale: torch.Tensor
    v_scale: torch.Tensor


def layer_is_quantized(kv_cache: tuple[torch.Tensor, ...]) -> bool:
    """Whether a layer cache carries codes + scales (a ``QuantizedKVLayer``)."""
    return isinstance(kv_cache, QuantizedKVLayer)

KV_CACHE_DTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}


def parse_kv_cache_dtype(name: str | None, model_dtype: torch.dtype) -> torch.dtype:
    """``auto`` (or None) -> the model dtype; ``int8`` / ``fp8`` -> the quantized code dtype."""
    if name in (None, "auto"):
        return model_dtype
    if name not in KV_CACHE_DTYPES:
        raise ValueError(f"unknown kv_cache_dtype {name!r}; allowed: auto, {', '.join(KV_CACHE_DTYPES)}")
    return KV_CACHE_DTYPES[str(name)]


def is_quantized(dtype: torch.dtype) -> bool:
    return dtype in KV_CACHE_DTYPES.values()


def scale_bytes_per_token(num_layers: int, num_kv_heads: int, dtype: torch.dtype) -> int:
    """Bytes of K and V scales per cached token (0 for an unquantized cache)."""
    return 2 * num_layers * num_kv_heads * 4 if is_quantized(dtype) else 0


def store_kv(k: torch.Tensor, v: torch.Tensor, kv_cache: tuple[torch.Tensor, ...], slots: torch.Tensor) -> None:
    """Write k/v [T, Hk, D] at flat ``slots`` (int64 [T]); quantize when the cache is."""
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    hk, d = k_cache.shape[-2:]
    if not layer_is_quantized(kv_cache):
        k_cache.view(-1, hk, d).index_copy_(0, slots, k.to(k_cache.dtype))
        v_cache.view(-1, hk, d).index_copy_(0, slots, v.to(v_cache.dtype))
        return
    for x, cache, scale in ((k, k_cache, kv_cache[2]), (v, v_cache, kv_cache[3])):
        q, s = quantize_last_dim(x, cache.dtype)
        # through 1-byte integer views: CPU index_copy_ has no float8 implementation
        cache.view(torch.uint8).view(-1, hk, d).index_copy_(0, slots, q.view(torch.uint8))
        scale.view(-1, hk).index_copy_(0, slots, s)


def dequantize(codes: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Gathered codes [..., Hk, D] and their scales [..., Hk] -> values in ``dtype``
    (``scale`` None: an unquantized cache, returned as is)."""
    if scale is None:
        return codes
    return (codes.float() * scale.unsqueeze(-1)).to(dtype)


def as_stored(x: torch.Tensor, cache: tuple[torch.Tensor, ...], which: int) -> torch.Tensor:
    """``x`` [T, Hk, D] as a later read of ``cache`` returns it, in x's dtype: quantized and
    dequantized for an int8/fp8 cache (``which`` = 0 for K, 1 for V; the same codes and
    scales :func:`store_kv` writes, so bit-identical to :func:`dequantize` of the gathered
    blocks), cast through the cache dtype otherwise (a no-op when they match)."""
    code_dtype = cache[which].dtype
    if layer_is_quantized(cache):
        q, s = quantize_last_dim(x, code_dtype)
        return dequantize(q, s, x.dtype)
    return x if code_dtype == x.dtype else x.to(code_dtype).to(x.dtype)

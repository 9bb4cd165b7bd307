"""store_kvcache (Triton) vs store_kvcache_ref: the cache contents must match bit for bit."""

from __future__ import annotations

import pytest
import torch
from infer_kernels.store_kvcache import store_kvcache, store_kvcache_ref
from kernel_test_utils import DEVICE, QUANT_KV, float_dtypes

CACHE_DTYPES = [
    pytest.param(None, id="same-as-input"),
    pytest.param(torch.int8, id="int8"),
    pytest.param(torch.float8_e4m3fn, id="fp8"),
]


def _setup(dtype, cache_dtype, kv_heads, head_dim, block_size, num_tokens=23, num_blocks=6):
    g = torch.Generator().manual_seed(0)
    # k, v as strided views of one fused buffer (as a qkv projection would give them).
    kv = torch.randn(num_tokens, 2, kv_heads, head_dim, generator=g) * 4
    kv[3] = 0.0  # an all-zero token: scale 0, codes 0, no NaN
    kv = kv.to(dtype)
    k, v = kv[:, 0], kv[:, 1]
    slots = torch.randperm(num_blocks * block_size, generator=g)[:num_tokens]
    slots[[2, 11]] = -1  # padding tokens are skipped
    shape = (num_blocks, block_size, kv_heads, head_dim)
    cache_dtype = cache_dtype or dtype
    if cache_dtype in QUANT_KV:
        cache = (
            torch.full(shape, 7, dtype=torch.int8)
            if cache_dtype == torch.int8
            else torch.full(shape, 7.0).to(cache_dtype)
        )
        scale = torch.full(shape[:3], float("nan"))  # untouched slots keep NaN on both sides
    else:
        cache = torch.full(shape, float("nan"), dtype=cache_dtype)
        scale = None
    dev = lambda t: None if t is None else t.to(DEVICE)
    return (
        dev(k),
        dev(v),
        dev(cache),
        dev(cache.clone()),
        dev(slots),
        dev(scale),
        dev(None if scale is None else scale.clone()),
    )


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.element_size() == 1 else t.float()


@pytest.mark.parametrize("dtype", float_dtypes())
@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES)
@pytest.mark.parametrize("kv_heads,head_dim,block_size", [(1, 64, 16), (3, 128, 32)])
def test_store_matches_reference(dtype, cache_dtype, kv_heads, head_dim, block_size):
    runs = []
    for fn in (store_kvcache, store_kvcache_ref):
        k, v, kc, vc, slots, ks, vs = _setup(dtype, cache_dtype, kv_heads, head_dim, block_size)
        fn(k, v, kc, vc, slots, ks, vs)
        runs.append((kc, vc, ks, vs))
    for got, want in zip(*runs):
        if got is not None:
            torch.testing.assert_close(_bits(got), _bits(want), atol=0, rtol=0, equal_nan=True)


def test_store_into_wider_float_cache():
    """A fp16 input into a fp32 cache is a plain cast (exact)."""
    k, v, kc, vc, slots, _, _ = _setup(torch.float16, torch.float32, 2, 64, 16)
    store_kvcache(k, v, kc, vc, slots)
    keep = slots >= 0
    s = slots[keep]
    assert torch.equal(kc[s // 16, s % 16], k[keep].float())


def test_store_rejects_bad_input():
    k, v, kc, vc, slots, ks, vs = _setup(torch.float16, torch.int8, 2, 64, 16)
    with pytest.raises(ValueError, match="k_scale and v_scale are required"):
        store_kvcache(k, v, kc, vc, slots)
    with pytest.raises(ValueError, match="slot_mapping must have shape"):
        store_kvcache(k, v, kc, vc, slots[:-1], ks, vs)
    with pytest.raises(ValueError, match="k must have shape"):
        store_kvcache(k[:, :1], v[:, :1], kc, vc, slots, ks, vs)

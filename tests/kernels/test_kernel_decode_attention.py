"""paged_decode_attention (Triton) vs paged_decode_attention_ref."""

from __future__ import annotations

import pytest
import torch
from infer_kernels.decode_attention import (
    default_num_splits,
    paged_decode_attention,
    paged_decode_attention_ref,
)
from kernel_test_utils import DEVICE, PagedKV, assert_close, float_dtypes, poison

# (num_heads, num_kv_heads, head_dim, block_size, context_lens, num_splits)
SHAPES = [
    pytest.param(4, 4, 64, 16, [1], None, id="mha-ctx1"),
    pytest.param(6, 2, 64, 16, [1, 17, 33, 100], 1, id="gqa3-ragged-nosplit"),
    pytest.param(6, 2, 64, 16, [1, 17, 33, 100], 4, id="gqa3-ragged-split4"),
    pytest.param(8, 1, 128, 32, [5, 64, 70], None, id="gqa8-d128-bs32"),
    pytest.param(8, 1, 128, 32, [5, 64, 70], 3, id="gqa8-d128-bs32-split3"),
    pytest.param(8, 2, 64, 16, [1100, 3], None, id="long-ctx-default-splits"),
    pytest.param(8, 2, 64, 16, [1100, 3], 1, id="long-ctx-nosplit"),
    pytest.param(4, 2, 64, 16, [0, 2, 31], 6, id="ctx0-and-empty-splits"),
]


@pytest.mark.parametrize("dtype", float_dtypes())
@pytest.mark.parametrize("num_heads,kv_heads,head_dim,block_size,lens,splits", SHAPES)
def test_decode_matches_reference(dtype, num_heads, kv_heads, head_dim, block_size, lens, splits):
    kv = PagedKV(lens, kv_heads, head_dim, block_size, dtype)
    q = torch.randn(len(lens), num_heads, head_dim, generator=torch.Generator().manual_seed(1))
    q = q.to(dtype).to(DEVICE)
    scale = head_dim**-0.5
    args = (q, kv.k_cache, kv.v_cache, kv.block_tables, kv.context_lens, scale)
    out = paged_decode_attention(*args, num_splits=splits, out=poison(q))
    assert_close(out, paged_decode_attention_ref(*args), dtype)
    assert out.dtype == dtype


@pytest.mark.parametrize("cache_dtype", [torch.int8, torch.float8_e4m3fn], ids=["int8", "fp8"])
@pytest.mark.parametrize("splits", [1, 3], ids=["nosplit", "split3"])
def test_decode_quantized_kv(cache_dtype, splits):
    dtype = torch.float16
    kv = PagedKV([1, 40, 77], 2, 64, 16, dtype, cache_dtype)
    q = torch.randn(3, 6, 64, generator=torch.Generator().manual_seed(2)).to(dtype).to(DEVICE)
    args = (
        q,
        kv.k_cache,
        kv.v_cache,
        kv.block_tables,
        kv.context_lens,
        0.125,
        kv.k_scale,
        kv.v_scale,
    )
    out = paged_decode_attention(*args, num_splits=splits, out=poison(q))
    assert_close(out, paged_decode_attention_ref(*args), dtype)


def test_context_zero_gives_zeros():
    kv = PagedKV([0, 3], 1, 64, 16, torch.float32)
    q = torch.randn(2, 2, 64).to(DEVICE)
    out = paged_decode_attention(
        q, kv.k_cache, kv.v_cache, kv.block_tables, kv.context_lens, 0.1, out=poison(q)
    )
    assert torch.equal(out[0], torch.zeros_like(out[0]))


def test_default_num_splits():
    assert default_num_splits(4, 8, 512) == 1  # short contexts never split
    assert default_num_splits(1, 8, 16384) == 16  # few programs, long context: split a lot
    assert default_num_splits(64, 8, 16384) == 1  # batch already fills the GPU


def test_decode_rejects_bad_input():
    kv = PagedKV([3], 2, 64, 16, torch.float32)
    q = torch.randn(1, 5, 64).to(DEVICE)  # 5 heads over 2 KV heads
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        paged_decode_attention(q, kv.k_cache, kv.v_cache, kv.block_tables, kv.context_lens, 0.1)
    q = torch.randn(1, 4, 64).to(DEVICE)
    with pytest.raises(ValueError, match="block_tables dtype"):
        paged_decode_attention(
            q, kv.k_cache, kv.v_cache, kv.block_tables.long(), kv.context_lens, 0.1
        )
    qkv = PagedKV([3], 2, 64, 16, torch.float16, torch.int8)
    with pytest.raises(ValueError, match="k_scale and v_scale are required"):
        paged_decode_attention(
            q.half(), qkv.k_cache, qkv.v_cache, qkv.block_tables, qkv.context_lens, 0.1
        )


@pytest.mark.parametrize("seed", range(6))
def test_decode_random_batches(seed):
    """Seeded fuzz over batch size, lengths, GQA ratio, head dim, block size, splits, KV dtype."""
    r = torch.Generator().manual_seed(100 + seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=r))]

    kv_heads, group = pick([1, 2]), pick([1, 3, 8])
    head_dim, block_size = pick([64, 128]), pick([16, 32])
    lens = torch.randint(1, 600, (int(torch.randint(1, 6, (1,), generator=r)),), generator=r)
    cache_dtype, splits = pick([None, torch.int8, torch.float8_e4m3fn]), pick([None, 1, 2, 5])
    dtype = torch.float16
    kv = PagedKV(lens.tolist(), kv_heads, head_dim, block_size, dtype, cache_dtype, seed=seed)
    q = torch.randn(len(lens), kv_heads * group, head_dim, generator=r).to(dtype).to(DEVICE)
    args = (q, kv.k_cache, kv.v_cache, kv.block_tables, kv.context_lens, head_dim**-0.5)
    args += (kv.k_scale, kv.v_scale)
    out = paged_decode_attention(*args, num_splits=splits, out=poison(q))
    assert_close(out, paged_decode_attention_ref(*args), dtype)

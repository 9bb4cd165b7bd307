"""paged_prefill_attention (Triton) vs paged_prefill_attention_ref, plus decode consistency."""

from __future__ import annotations

import pytest
import torch
from infer_kernels.decode_attention import paged_decode_attention_ref
from infer_kernels.prefill_attention import paged_prefill_attention, paged_prefill_attention_ref
from kernel_test_utils import DEVICE, PagedKV, assert_close, float_dtypes, poison


def _qsl(query_lens):
    return torch.tensor([0, *query_lens]).cumsum(0).to(torch.int32).to(DEVICE)


# (num_heads, num_kv_heads, head_dim, block_size, context_lens, query_lens)
SHAPES = [
    pytest.param(4, 4, 64, 16, [7, 40], [7, 40], id="mha-fresh-ragged"),
    pytest.param(6, 2, 64, 16, [70, 33, 16, 50], [70, 0, 3, 17], id="gqa3-prefix-extend-mix"),
    pytest.param(8, 1, 128, 32, [45, 96], [45, 31], id="gqa8-d128-bs32"),
    pytest.param(8, 2, 64, 32, [130], [1], id="extend-by-one-long-prefix"),
]


@pytest.mark.parametrize("dtype", float_dtypes())
@pytest.mark.parametrize("num_heads,kv_heads,head_dim,block_size,lens,qlens", SHAPES)
def test_prefill_matches_reference(dtype, num_heads, kv_heads, head_dim, block_size, lens, qlens):
    kv = PagedKV(lens, kv_heads, head_dim, block_size, dtype)
    qsl = _qsl(qlens)
    q = torch.randn(sum(qlens), num_heads, head_dim, generator=torch.Generator().manual_seed(3))
    q = q.to(dtype).to(DEVICE)
    args = (q, kv.k_cache, kv.v_cache, kv.block_tables, qsl, kv.context_lens, head_dim**-0.5)
    out = paged_prefill_attention(*args, out=poison(q))
    assert_close(out, paged_prefill_attention_ref(*args), dtype)


@pytest.mark.parametrize("cache_dtype", [torch.int8, torch.float8_e4m3fn], ids=["int8", "fp8"])
def test_prefill_quantized_kv(cache_dtype):
    dtype = torch.float16
    lens, qlens = [50, 20], [18, 20]
    kv = PagedKV(lens, 2, 64, 16, dtype, cache_dtype)
    q = torch.randn(sum(qlens), 4, 64, generator=torch.Generator().manual_seed(4))
    q = q.to(dtype).to(DEVICE)
    args = (
        q,
        kv.k_cache,
        kv.v_cache,
        kv.block_tables,
        _qsl(qlens),
        kv.context_lens,
        0.125,
        kv.k_scale,
        kv.v_scale,
    )
    out = paged_prefill_attention(*args, out=poison(q))
    assert_close(out, paged_prefill_attention_ref(*args), dtype)


def test_prefill_last_row_equals_decode():
    """The last query of an extend step is exactly a decode query at the same context."""
    lens, qlens = [37, 90], [5, 12]
    kv = PagedKV(lens, 2, 64, 16, torch.float32)
    qsl = _qsl(qlens)
    q = torch.randn(sum(qlens), 8, 64).to(DEVICE)
    out = paged_prefill_attention(
        q, kv.k_cache, kv.v_cache, kv.block_tables, qsl, kv.context_lens, 0.125
    )
    last = qsl[1:].long() - 1
    dec = paged_decode_attention_ref(
        q[last], kv.k_cache, kv.v_cache, kv.block_tables, kv.context_lens, 0.125
    )
    assert_close(out[last], dec, torch.float32)


def test_prefill_rows_past_query_start_loc_untouched():
    kv = PagedKV([4], 1, 64, 16, torch.float32)
    q = torch.randn(6, 2, 64).to(DEVICE)  # 2 padding rows after the 4 real ones
    out = paged_prefill_attention(
        q, kv.k_cache, kv.v_cache, kv.block_tables, _qsl([4]), kv.context_lens, 0.125, out=poison(q)
    )
    assert not torch.isnan(out[:4]).any() and torch.isnan(out[4:]).all()


def test_prefill_rejects_bad_query_start_loc():
    kv = PagedKV([4, 4], 1, 64, 16, torch.float32)
    q = torch.randn(8, 2, 64).to(DEVICE)
    with pytest.raises(ValueError, match="query_start_loc must have shape"):
        paged_prefill_attention(
            q, kv.k_cache, kv.v_cache, kv.block_tables, _qsl([8]), kv.context_lens, 0.1
        )


@pytest.mark.parametrize("seed", range(6))
def test_prefill_random_batches(seed):
    """Seeded fuzz: random prefix / new-token splits, GQA ratio, head dim, block size, KV dtype."""
    r = torch.Generator().manual_seed(200 + seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=r))]

    kv_heads, group = pick([1, 2]), pick([1, 3, 8])
    head_dim, block_size = pick([64, 128]), pick([16, 32])
    num_seqs = int(torch.randint(1, 5, (1,), generator=r))
    lens = torch.randint(1, 160, (num_seqs,), generator=r)
    qlens = [int(torch.randint(0, n + 1, (1,), generator=r)) for n in lens.tolist()]
    qlens[0] = max(qlens[0], 1)
    cache_dtype = pick([None, torch.int8, torch.float8_e4m3fn])
    dtype = torch.float16
    kv = PagedKV(lens.tolist(), kv_heads, head_dim, block_size, dtype, cache_dtype, seed=seed)
    q = torch.randn(sum(qlens), kv_heads * group, head_dim, generator=r).to(dtype).to(DEVICE)
    args = (q, kv.k_cache, kv.v_cache, kv.block_tables, _qsl(qlens), kv.context_lens, 0.1)
    args += (kv.k_scale, kv.v_scale)
    out = paged_prefill_attention(*args, out=poison(q))
    assert_close(out, paged_prefill_attention_ref(*args), dtype)

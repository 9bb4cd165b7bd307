"""The torch references against naive dense math, so the contract itself is trustworthy.

These run on CPU in every dtype the engine uses (bf16 included: no Triton involved).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from infer_kernels.reference import (
    fused_add_rms_norm_ref,
    gather_kv_ref,
    paged_decode_attention_ref,
    paged_prefill_attention_ref,
    quantize_per_token_fp8,
    quantize_per_token_int8,
    rms_norm_ref,
    rotary_embedding_ref,
    silu_and_mul_ref,
    store_kvcache_ref,
)
from kernel_test_utils import PagedKV

REF_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
REF_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _naive_attention(q, keys, values, positions, scale):
    """q [n, H, D] at ``positions``; keys/values [ctx, Hkv, D]; per head, written out."""
    n, num_heads, _ = q.shape
    group = num_heads // keys.shape[1]
    out = torch.zeros(n, num_heads, q.shape[2], dtype=torch.float64)
    for h in range(num_heads):
        k = keys[:, h // group].double()
        v = values[:, h // group].double()
        for t in range(n):
            p = int(positions[t])
            logits = (k[: p + 1] @ q[t, h].double()) * scale
            w = torch.exp(logits - logits.max())
            out[t, h] = (w / w.sum()) @ v[: p + 1]
    return out


@pytest.mark.parametrize("dtype", REF_DTYPES)
@pytest.mark.parametrize(
    "cache_dtype", [None, torch.int8, torch.float8_e4m3fn], ids=["float", "int8", "fp8"]
)
def test_decode_ref_vs_naive(dtype, cache_dtype):
    lens = [1, 20, 37]
    kv = PagedKV(lens, 2, 32, 16, dtype, cache_dtype)
    q = torch.randn(3, 6, 32).to(dtype)
    out = paged_decode_attention_ref(
        q,
        kv.k_cache.cpu(),
        kv.v_cache.cpu(),
        kv.block_tables.cpu(),
        kv.context_lens.cpu(),
        0.2,
        *(None if s is None else s.cpu() for s in (kv.k_scale, kv.v_scale)),
    )
    for i, ctx in enumerate(lens):
        want = _naive_attention(q[i : i + 1], kv.dense_k[i], kv.dense_v[i], [ctx - 1], 0.2)
        torch.testing.assert_close(
            out[i : i + 1].double(), want, atol=REF_TOL[dtype], rtol=REF_TOL[dtype]
        )


@pytest.mark.parametrize("dtype", REF_DTYPES)
def test_prefill_ref_vs_naive(dtype):
    lens, qlens = [9, 40, 18], [9, 7, 0]
    kv = PagedKV(lens, 1, 32, 16, dtype)
    qsl = torch.tensor([0, *qlens]).cumsum(0).int()
    q = torch.randn(sum(qlens), 3, 32).to(dtype)
    out = paged_prefill_attention_ref(
        q,
        kv.k_cache.cpu(),
        kv.v_cache.cpu(),
        kv.block_tables.cpu(),
        qsl,
        kv.context_lens.cpu(),
        0.3,
    )
    for i, (ctx, n) in enumerate(zip(lens, qlens)):
        if n == 0:
            continue
        rows = slice(int(qsl[i]), int(qsl[i + 1]))
        want = _naive_attention(q[rows], kv.dense_k[i], kv.dense_v[i], range(ctx - n, ctx), 0.3)
        torch.testing.assert_close(
            out[rows].double(), want, atol=REF_TOL[dtype], rtol=REF_TOL[dtype]
        )


def test_store_then_gather_round_trip():
    k = torch.randn(5, 2, 8)
    v = torch.randn(5, 2, 8)
    kc = torch.zeros(3, 4, 2, 8)
    vc = torch.zeros_like(kc)
    block_table = torch.tensor([[2, 0]], dtype=torch.int32)
    slots = torch.tensor([8, 9, 10, 11, 0])  # positions 0..4 of a sequence on blocks [2, 0]
    store_kvcache_ref(k, v, kc, vc, slots)
    assert torch.equal(gather_kv_ref(kc, None, block_table, 5)[0], k)
    assert torch.equal(gather_kv_ref(vc, None, block_table, 5)[0], v)


@pytest.mark.parametrize(
    "quant,qmax,dtype",
    [
        (quantize_per_token_int8, 127, torch.int8),
        (quantize_per_token_fp8, 448, torch.float8_e4m3fn),
    ],
    ids=["int8", "fp8"],
)
def test_quantize_per_token(quant, qmax, dtype):
    x = torch.randn(6, 100) * torch.logspace(-3, 2, 6).unsqueeze(1)
    x[2] = 0.0
    q, scale = quant(x)
    assert q.dtype == dtype and scale.shape == (6, 1) and scale.dtype == torch.float32
    torch.testing.assert_close(scale.squeeze(1), x.abs().amax(1) / qmax)
    assert q[2].float().abs().max() == 0 and scale[2] == 0  # zero row: no NaN
    assert q.float().abs().amax(1)[[0, 1, 3, 4, 5]].eq(qmax).all()  # amax maps to qmax
    err = (q.float() * scale - x).abs()
    if dtype == torch.int8:
        assert (err <= scale / 2 + 1e-6).all()  # round to nearest: half a step
    else:
        assert (err <= x.abs() * 2**-4 + scale * 2**-10).all()  # 3 mantissa bits, subnormals


@pytest.mark.parametrize("dtype", REF_DTYPES)
def test_norm_refs_vs_formula(dtype):
    x, r, w = torch.randn(4, 96).to(dtype), torch.randn(4, 96).to(dtype), torch.randn(96).to(dtype)
    h = (x.float() + r.float()).to(dtype).double()  # the sum is rounded once to dtype (HF)
    want = h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * w.double()
    out, res = fused_add_rms_norm_ref(x, r, w, 1e-6)
    assert torch.equal(res, (x.float() + r.float()).to(dtype))
    torch.testing.assert_close(out.double(), want, atol=REF_TOL[dtype], rtol=REF_TOL[dtype])
    xd = x.double()
    want = xd / torch.sqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-6) * w.double()
    torch.testing.assert_close(
        rms_norm_ref(x, w, 1e-6).double(), want, atol=REF_TOL[dtype], rtol=REF_TOL[dtype]
    )


@pytest.mark.parametrize("dtype", REF_DTYPES)
@pytest.mark.parametrize("rot_dim", [64, 32])
def test_rotary_ref_vs_hf_rotate_half(dtype, rot_dim):
    """Against HF Llama's formula: x * cos + rotate_half(x) * sin on the rotated dims."""
    head_dim, base = 64, 500000.0
    positions = torch.tensor([0, 3, 77, 1000])
    inv = 1.0 / base ** (torch.arange(0, rot_dim, 2, dtype=torch.float64) / rot_dim)
    freqs = torch.outer(positions.double(), inv)
    emb = torch.cat([freqs, freqs], dim=-1)  # HF duplicates the frequencies
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]
    table = torch.zeros(1001, rot_dim)
    table[positions] = torch.cat([freqs.cos(), freqs.sin()], -1).float()
    q, k = torch.randn(4, 6, head_dim).to(dtype), torch.randn(4, 2, head_dim).to(dtype)

    def hf(x):
        xr = x[..., :rot_dim].double()
        rot = torch.cat([-xr[..., rot_dim // 2 :], xr[..., : rot_dim // 2]], dim=-1)
        return torch.cat([xr * cos + rot * sin, x[..., rot_dim:].double()], dim=-1)

    want_q, want_k = hf(q), hf(k)
    rotary_embedding_ref(positions, q, k, table)
    torch.testing.assert_close(q.double(), want_q, atol=REF_TOL[dtype] * 4, rtol=REF_TOL[dtype])
    torch.testing.assert_close(k.double(), want_k, atol=REF_TOL[dtype] * 4, rtol=REF_TOL[dtype])


@pytest.mark.parametrize("dtype", REF_DTYPES)
def test_silu_and_mul_ref_vs_formula(dtype):
    x = torch.randn(3, 40).to(dtype)
    g, u = x[:, :20].double(), x[:, 20:].double()
    want = g / (1 + torch.exp(-g)) * u
    torch.testing.assert_close(
        silu_and_mul_ref(x).double(), want, atol=REF_TOL[dtype], rtol=REF_TOL[dtype]
    )
    assert torch.equal(
        silu_and_mul_ref(x), (F.silu(x[:, :20].float()) * x[:, 20:].float()).to(dtype)
    )


def test_decode_ref_long_context_numerics():
    """Large logits stay finite: softmax is max-subtracted (scale chosen to make logits ~100)."""
    kv = PagedKV([300], 1, 32, 16, torch.float32)
    q = torch.full((1, 1, 32), 3.0)
    out = paged_decode_attention_ref(
        q,
        kv.k_cache.cpu(),
        kv.v_cache.cpu(),
        kv.block_tables.cpu(),
        kv.context_lens.cpu(),
        math.sqrt(32),
    )
    assert torch.isfinite(out).all()

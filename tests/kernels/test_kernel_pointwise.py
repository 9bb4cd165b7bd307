"""rms_norm, fused_add_rms_norm, rotary_embedding, silu_and_mul (Triton) vs references."""

from __future__ import annotations

import pytest
import torch
from infer_kernels.rms_norm import (
    fused_add_rms_norm,
    fused_add_rms_norm_ref,
    rms_norm,
    rms_norm_ref,
)
from infer_kernels.rotary import rotary_embedding, rotary_embedding_ref
from infer_kernels.silu_and_mul import silu_and_mul, silu_and_mul_ref
from kernel_test_utils import DEVICE, assert_close, float_dtypes, poison


def _randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", float_dtypes())
@pytest.mark.parametrize("num_tokens,hidden", [(1, 64), (7, 576)])
def test_rms_norm(dtype, num_tokens, hidden):
    x, w = _randn(num_tokens, hidden, dtype=dtype), _randn(hidden, dtype=dtype, seed=1)
    out = rms_norm(x, w, 1e-5, out=poison(x))
    assert_close(out, rms_norm_ref(x, w, 1e-5), dtype)


@pytest.mark.parametrize("dtype", float_dtypes())
@pytest.mark.parametrize("num_tokens,hidden", [(3, 64), (5, 576)])
def test_fused_add_rms_norm(dtype, num_tokens, hidden):
    x, r = _randn(num_tokens, hidden, dtype=dtype), _randn(num_tokens, hidden, dtype=dtype, seed=2)
    w = _randn(hidden, dtype=dtype, seed=1)
    out, res = fused_add_rms_norm(x, r, w, 1e-6, out=poison(x), residual_out=poison(r))
    want_out, want_res = fused_add_rms_norm_ref(x, r, w, 1e-6)
    assert_close(res, want_res, dtype, atol=0, rtol=0)  # one rounding of an exact fp32 sum
    assert_close(out, want_out, dtype)


def test_fused_add_rms_norm_in_place():
    """out / residual_out may alias x / residual (the engine's buffer-reuse pattern)."""
    x, r, w = _randn(4, 128), _randn(4, 128, seed=2), _randn(128, seed=1)
    want_out, want_res = fused_add_rms_norm_ref(x, r, w, 1e-6)
    out, res = fused_add_rms_norm(x, r, w, 1e-6, out=x, residual_out=r)
    assert out.data_ptr() == x.data_ptr() and res.data_ptr() == r.data_ptr()
    assert_close(out, want_out)
    assert_close(res, want_res)


def _cos_sin(max_pos, rot_dim, base=10000.0):
    inv = 1.0 / base ** (torch.arange(0, rot_dim, 2).float() / rot_dim)
    freqs = torch.outer(torch.arange(max_pos).float(), inv)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(DEVICE)


@pytest.mark.parametrize("dtype", float_dtypes())
@pytest.mark.parametrize(
    "num_heads,kv_heads,head_dim,rot_dim",
    [(4, 4, 64, 64), (9, 3, 64, 64), (8, 1, 128, 64)],
    ids=["mha", "gqa3", "gqa8-partial-rot"],
)
def test_rotary(dtype, num_heads, kv_heads, head_dim, rot_dim):
    num_tokens = 6
    # q and k as strided views of a fused qkv buffer (the engine's layout).
    qkv = _randn(num_tokens, (num_heads + 2 * kv_heads) * head_dim, dtype=dtype)
    positions = torch.tensor([0, 1, 17, 4, 200, 255]).to(DEVICE)
    cache = _cos_sin(256, rot_dim)

    def split(buf):
        q = buf[:, : num_heads * head_dim].view(num_tokens, num_heads, head_dim)
        k = buf[:, num_heads * head_dim : (num_heads + kv_heads) * head_dim]
        return q, k.view(num_tokens, kv_heads, head_dim)

    got, want = qkv.clone(), qkv.clone()
    rotary_embedding(positions, *split(got), cache)
    rotary_embedding_ref(positions, *split(want), cache)
    assert_close(got, want, dtype)  # includes the untouched v part and dims >= rot_dim
    assert not torch.equal(got, qkv)


@pytest.mark.parametrize("dtype", float_dtypes())
@pytest.mark.parametrize("num_tokens,d", [(1, 64), (5, 1536), (3, 1100)])
def test_silu_and_mul(dtype, num_tokens, d):
    x = _randn(num_tokens, 2 * d, dtype=dtype)
    out = silu_and_mul(x, out=poison(x[:, :d].contiguous()))
    assert_close(out, silu_and_mul_ref(x), dtype)


def test_pointwise_reject_bad_input():
    with pytest.raises(ValueError, match="weight must have shape"):
        rms_norm(_randn(2, 64), _randn(32), 1e-6)
    with pytest.raises(ValueError, match="last dim must be even"):
        silu_and_mul(_randn(2, 63))
    with pytest.raises(ValueError, match="rot_dim must be even"):
        rotary_embedding(
            torch.zeros(2, dtype=torch.long, device=DEVICE),
            _randn(2, 2, 64),
            _randn(2, 1, 64),
            _randn(8, 66),
        )

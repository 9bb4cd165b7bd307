"""AWQ packing helpers and awq_gemm (Triton) vs awq_gemm_ref."""

from __future__ import annotations

import pytest
import torch
from infer_kernels.awq_gemm import awq_dequantize_ref, awq_gemm, awq_gemm_ref, awq_pack, awq_unpack
from kernel_test_utils import DEVICE, assert_close, float_dtypes, poison


def _awq_weights(k, n, group, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (k, n), generator=g)
    zeros = torch.randint(0, 16, (k // group, n), generator=g)
    scales = (torch.rand(k // group, n, generator=g) * 0.02 + 0.005).to(dtype)
    return codes, zeros, scales


def test_pack_unpack_round_trip():
    codes = torch.randint(0, 16, (40, 64))
    packed = awq_pack(codes)
    assert packed.dtype == torch.int32 and packed.shape == (40, 8)
    assert torch.equal(awq_unpack(packed), codes.to(torch.int32))


def test_pack_uses_autoawq_interleaved_order():
    """Nibble i of each int32 holds column [0, 2, 4, 6, 1, 3, 5, 7][i] of its group of 8."""
    codes = torch.arange(8).view(1, 8)  # column c holds value c
    packed = int(awq_pack(codes)[0, 0]) & 0xFFFFFFFF
    nibbles = [(packed >> (4 * i)) & 0xF for i in range(8)]
    assert nibbles == [0, 2, 4, 6, 1, 3, 5, 7]
    assert int(awq_pack(torch.full((1, 8), 15))[0, 0]) == -1  # all bits set, sign included


def test_dequantize_matches_naive_loop():
    k, n, group = 64, 16, 32
    codes, zeros, scales = _awq_weights(k, n, group, torch.float32)
    w = awq_dequantize_ref(awq_pack(codes), awq_pack(zeros), scales, group)
    naive = torch.empty(k, n)
    for r in range(k):
        for c in range(n):
            naive[r, c] = (codes[r, c] - zeros[r // group, c]) * scales[r // group, c]
    torch.testing.assert_close(w, naive, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", float_dtypes())
@pytest.mark.parametrize("m,k,n,group", [(1, 128, 64, 32), (17, 256, 96, 64), (5, 256, 200, 128)])
def test_awq_gemm(dtype, m, k, n, group):
    codes, zeros, scales = _awq_weights(k, n, group, dtype)
    qweight, qzeros = awq_pack(codes).to(DEVICE), awq_pack(zeros).to(DEVICE)
    scales = scales.to(DEVICE)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(1)).to(dtype).to(DEVICE)
    want = awq_gemm_ref(x, qweight, qzeros, scales, group)
    got = awq_gemm(x, qweight, qzeros, scales, group, out=poison(want))
    assert_close(got, want, dtype)


def test_awq_rejects_bad_input():
    codes, zeros, scales = _awq_weights(128, 64, 32, torch.float16)
    qw, qz = awq_pack(codes), awq_pack(zeros)
    x = torch.randn(2, 128).half()
    with pytest.raises(ValueError, match="group_size must be a positive int dividing"):
        awq_gemm(x, qw, qz, scales, 48)
    with pytest.raises(ValueError, match="x dtype must be one of \\[float16\\]"):
        awq_gemm(x.float(), qw, qz, scales, 32)
    with pytest.raises(ValueError, match="qzeros must have shape"):
        awq_gemm(x, qw, qz[:2], scales, 32)
    with pytest.raises(ValueError, match="values must be in \\[0, 15\\]"):
        awq_pack(codes + 1)

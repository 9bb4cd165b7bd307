"""w8a8_int8_gemm / fp8_scaled_gemm (Triton) vs references, and the references vs dense math.

fp8 under the interpreter: float8_e4m3fn tensors load correctly and tl.dot on them works
(the interpreter upcasts to fp16, exact for e4m3), so the fp8 kernel is tested directly. The
one interpreter fp8 defect (fp32 -> fp8 casts mis-round on a mantissa carry) only concerns
kernels that WRITE fp8, and store_kvcache avoids it by rounding in fp32 first.
"""

from __future__ import annotations

import pytest
import torch
from infer_kernels.reference import quantize_per_token_fp8, quantize_per_token_int8
from infer_kernels.scaled_gemm import (
    fp8_scaled_gemm,
    fp8_scaled_gemm_ref,
    w8a8_int8_gemm,
    w8a8_int8_gemm_ref,
)
from kernel_test_utils import DEVICE, assert_close, poison

OUT_DTYPES = [torch.float32, torch.float16]
SHAPES = [(1, 64, 48), (17, 200, 70), (64, 96, 130)]  # (M, K, N): decode row, ragged K/N


def _operands(m, k, n, quantize, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=g)
    b = torch.randn(n, k, generator=g) * 0.05
    aq, a_s = quantize(a)
    bq, b_s = quantize(b)
    bias = torch.randn(n, generator=g)
    dev = lambda *ts: [t.to(DEVICE) for t in ts]
    return a, b, *dev(aq, a_s, bq, b_s.view(-1), bias)


@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_int8_gemm(out_dtype, m, k, n, with_bias):
    _, _, aq, a_s, bq, b_s, bias = _operands(m, k, n, quantize_per_token_int8)
    bias = bias if with_bias else None
    want = w8a8_int8_gemm_ref(aq, bq, a_s, b_s, out_dtype, bias)
    got = w8a8_int8_gemm(aq, bq, a_s, b_s, out_dtype, bias, out=poison(want))
    assert_close(got, want, out_dtype)


@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_fp8_gemm(out_dtype, m, k, n):
    _, _, aq, a_s, bq, b_s, bias = _operands(m, k, n, quantize_per_token_fp8)
    want = fp8_scaled_gemm_ref(aq, bq, a_s, b_s, out_dtype, bias)
    got = fp8_scaled_gemm(aq, bq, a_s, b_s, out_dtype, bias, out=poison(want))
    assert_close(got, want, out_dtype)


@pytest.mark.parametrize("kernel", [w8a8_int8_gemm, fp8_scaled_gemm], ids=["int8", "fp8"])
def test_per_tensor_scales(kernel):
    quant = quantize_per_token_int8 if kernel is w8a8_int8_gemm else quantize_per_token_fp8
    ref = w8a8_int8_gemm_ref if kernel is w8a8_int8_gemm else fp8_scaled_gemm_ref
    _, _, aq, _, bq, _, _ = _operands(9, 64, 40, quant)
    a_s = torch.tensor([0.02], device=DEVICE)
    b_s = torch.tensor([[0.003]], device=DEVICE)
    assert_close(kernel(aq, bq, a_s, b_s, torch.float32), ref(aq, bq, a_s, b_s, torch.float32))


@pytest.mark.parametrize(
    "quant,ref,rel_tol",
    [
        (quantize_per_token_int8, w8a8_int8_gemm_ref, 0.02),
        (quantize_per_token_fp8, fp8_scaled_gemm_ref, 0.08),
    ],
    ids=["int8", "fp8"],
)
def test_reference_is_dequantize_then_matmul(quant, ref, rel_tol):
    """The contract written out directly: exact dequantize + fp64 matmul, then vs fp32 math."""
    a, b, aq, a_s, bq, b_s, bias = _operands(12, 256, 48, quant)
    got = ref(aq, bq, a_s, b_s, torch.float32, bias).cpu().double()
    deq_a = aq.cpu().double() * a_s.cpu().double().view(-1, 1)
    deq_b = bq.cpu().double() * b_s.cpu().double().view(-1, 1)
    exact = deq_a @ deq_b.T + bias.cpu().double()
    torch.testing.assert_close(got, exact, atol=1e-4, rtol=1e-5)
    # and the quantization error against the unquantized product is small
    full = a.double() @ b.double().T + bias.cpu().double()
    assert (got - full).abs().max() < rel_tol * full.abs().max()


def test_gemm_rejects_bad_input():
    _, _, aq, a_s, bq, b_s, _ = _operands(4, 64, 16, quantize_per_token_int8)
    with pytest.raises(ValueError, match="b_int8 must be \\[N, K\\]"):
        w8a8_int8_gemm(aq, bq[:, :32], a_s, b_s, torch.float16)
    with pytest.raises(ValueError, match="a_int8 dtype must be one of \\[int8\\]"):
        w8a8_int8_gemm(aq.float(), bq, a_s, b_s, torch.float16)
    with pytest.raises(ValueError, match="out_dtype must be"):
        w8a8_int8_gemm(aq, bq, a_s, b_s, torch.int32)
    with pytest.raises(ValueError, match="a_scale must be"):
        w8a8_int8_gemm(aq, bq, a_s[:2], b_s, torch.float16)

"""quantize_per_token_int8 / _fp8 (Triton) vs the references: codes and scales bit-exact."""

from __future__ import annotations

import pytest
import torch
from infer_kernels.quantize import (
    quantize_per_token_fp8,
    quantize_per_token_fp8_ref,
    quantize_per_token_int8,
    quantize_per_token_int8_ref,
)
from kernel_test_utils import DEVICE, float_dtypes

PAIRS = [
    pytest.param(quantize_per_token_int8, quantize_per_token_int8_ref, id="int8"),
    pytest.param(quantize_per_token_fp8, quantize_per_token_fp8_ref, id="fp8"),
]


@pytest.mark.parametrize("dtype", float_dtypes())
@pytest.mark.parametrize("kernel,ref", PAIRS)
@pytest.mark.parametrize("m,k", [(1, 64), (9, 576)])
def test_quantize_matches_reference(dtype, kernel, ref, m, k):
    g = torch.Generator().manual_seed(0)
    # Rows spanning 6 decades so fp8 codes hit subnormals and every exponent.
    x = torch.randn(m, k, generator=g) * torch.logspace(-3, 3, m).unsqueeze(1)
    x[0, :5] = 0.0
    if m > 1:
        x[1] = 0.0  # all-zero row: scale 0, codes 0
    x = x.to(dtype).to(DEVICE)
    q, s = kernel(x)
    q_ref, s_ref = ref(x)
    assert q.dtype == q_ref.dtype and s.shape == (m, 1)
    torch.testing.assert_close(s, s_ref, atol=0, rtol=0)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))

"""Quantize/dequantize error bounds and packing round-trips (synthetic tensors)."""

from __future__ import annotations

import pytest
import torch
from infer_kernels.reference import awq_dequantize_ref

from infer.quant.quantize import (
    FP8,
    fake_quant_per_token,
    fp8_per_channel,
    from_autoawq,
    int4_dequant,
    int4_groups,
    int8_per_channel,
    pack_int4_cpu,
    to_autoawq,
    unpack_int4_cpu,
)


def _w(n: int = 48, k: int = 128, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[3, 7] = 2.0  # an outlier weight
    w[5] = 0.0  # an all-zero row
    return w


def test_int8_per_channel_error_bound() -> None:
    w = _w()
    q, s = int8_per_channel(w)
    assert q.dtype == torch.int8 and s.shape == (w.shape[0],)
    assert int(q.abs().max()) <= 127
    err = (q.float() * s[:, None] - w).abs()
    assert bool((err <= s[:, None] / 2 + 1e-7).all())  # round to nearest: half a step
    assert bool((q[5] == 0).all()) and float(s[5]) == 0.0  # zero row: no NaN
    # the row max is exact
    row = w.abs().argmax(1)
    assert torch.allclose((q.float() * s[:, None]).gather(1, row[:, None]).abs(), w.abs().amax(1, keepdim=True))


def test_fp8_per_channel_matches_e4m3_rounding() -> None:
    w = _w()
    q, s = fp8_per_channel(w)
    assert q.dtype == FP8
    deq = q.float() * s[:, None]
    # e4m3 keeps 3 mantissa bits: relative error <= 2^-4 for normals; tiny values are
    # subnormal with absolute step 2^-9 * scale
    err = (deq - w).abs()
    bound = w.abs() * 2**-4 + s[:, None] * 2**-10
    assert bool((err <= bound + 1e-12).all())
    assert torch.equal(q.float(), (w / torch.where(s > 0, s, 1)[:, None]).to(FP8).float())


@pytest.mark.parametrize("qdtype,rel", [(torch.int8, 1 / 127), (FP8, 2**-4)])
def test_fake_quant_per_token(qdtype: torch.dtype, rel: float) -> None:
    x = torch.randn(9, 64) * torch.logspace(-2, 2, 9)[:, None]
    y = fake_quant_per_token(x, qdtype)
    amax = x.abs().amax(1, keepdim=True)
    assert bool(((y - x).abs() <= amax * rel + 1e-6).all())


@pytest.mark.parametrize("group", [32, 64])
def test_int4_groups_error_bound(group: int) -> None:
    w = _w()
    codes, scales, zeros = int4_groups(w, group)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 15
    assert scales.shape == zeros.shape == (w.shape[0], w.shape[1] // group)
    assert torch.equal(scales, scales.half().float())  # fp16-representable (AutoAWQ stores fp16)
    deq = int4_dequant(codes, scales, zeros, group)
    step = scales.repeat_interleave(group, dim=1)
    # round to nearest on a grid whose zero point is itself rounded: <= one step
    assert bool(((deq - w).abs() <= step * (1 + 1e-3)).all())
    # typical error is about half a step or less
    assert float(((deq - w).abs() / step).mean()) < 0.3


def test_int4_group_size_must_divide() -> None:
    with pytest.raises(ValueError, match="group_size"):
        int4_groups(torch.randn(8, 576), 128)


def test_cpu_int4_packing_roundtrip() -> None:
    codes = torch.randint(0, 16, (24, 96), dtype=torch.uint8)
    packed = pack_int4_cpu(codes)
    assert packed.shape == (24, 48) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4_cpu(packed), codes)
    # byte i of a 32-chunk: k = i in the low nibble, k = 16 + i in the high nibble
    assert int(packed[0, 0]) == int(codes[0, 0]) | (int(codes[0, 16]) << 4)


def test_autoawq_layout_roundtrip_and_dequant() -> None:
    w = _w(n=64, k=128)
    codes, scales, zeros = int4_groups(w, 64)
    qweight, qzeros, sc = to_autoawq(codes, scales, zeros)
    assert qweight.shape == (128, 8) and qweight.dtype == torch.int32
    assert qzeros.shape == (2, 8) and qzeros.dtype == torch.int32
    assert sc.shape == (2, 64) and sc.dtype == torch.float16
    c2, s2, z2 = from_autoawq(qweight, qzeros, sc)
    assert torch.equal(c2, codes) and torch.equal(z2, zeros) and torch.equal(s2, scales)
    # the kernels' reference reads the same weights: [K, N] = our [N, K] transposed
    ref = awq_dequantize_ref(qweight, qzeros, sc.float(), 64)
    assert torch.allclose(ref.t(), int4_dequant(codes, scales, zeros, 64), atol=0, rtol=0)

"""The C++ weight-only kernels against dequantize + F.linear (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from infer.quant import cpu_kernel
from infer.quant.quantize import FP8, int4_dequant, int4_groups, pack_int4_cpu

mod = cpu_kernel.load()
pytestmark = pytest.mark.skipif(mod is None, reason="CPU quant kernel did not build (no compiler?)")
ROWS = [1, 2, 3, 4, 5, 9]  # chunks of 4 (8-bit) / 2 (int4) activation rows, and tails


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("k", [64, 40, 576])  # 40: masked K tail
@pytest.mark.parametrize("bias", [False, True])
def test_int8_linear(m: int, k: int, bias: bool) -> None:
    n = 13  # not a multiple of the 4-row tile
    x = torch.randn(m, k)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    s = torch.rand(n) * 0.01
    b = torch.randn(n) if bias else None
    out = mod.int8_linear(x, w, s, b if bias else torch.empty(0))
    _close(out, F.linear(x, w.float() * s[:, None], b))


@pytest.mark.parametrize("m", ROWS)
def test_fp8_linear(m: int) -> None:
    n, k = 11, 80
    x = torch.randn(m, k)
    w = (torch.randn(n, k) * 100).clamp(-448, 448).to(FP8)
    s = torch.rand(n)
    out = mod.fp8_linear(x, w.view(torch.uint8), s, torch.empty(0))
    _close(out, F.linear(x, w.float() * s[:, None]))


def test_fp8_decode_every_code_exactly() -> None:
    codes = torch.arange(256, dtype=torch.uint8)
    codes = codes[(codes & 0x7F) != 0x7F]  # drop the two NaN encodings
    vals = codes.view(FP8).float()  # subnormals, zeros and +-448 included
    k = vals.numel()
    out = mod.fp8_linear(torch.eye(k), codes.view(1, k).contiguous(), torch.ones(1), torch.empty(0))
    assert torch.equal(out[:, 0], vals)


@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("bias", [False, True])
def test_int4_linear(m: int, group: int, bias: bool) -> None:
    n, k = 10, 256
    w = torch.randn(n, k) * 0.05
    codes, scales, zeros = int4_groups(w, group)
    offset = -zeros.float() * scales
    x = torch.randn(m, k)
    b = torch.randn(n) if bias else None
    out = mod.int4_linear(x, pack_int4_cpu(codes), scales, offset, group, b if bias else torch.empty(0))
    _close(out, F.linear(x, int4_dequant(codes, scales, zeros, group), b))


def test_bad_shapes_raise() -> None:
    with pytest.raises(RuntimeError, match="group size"):
        mod.int4_linear(torch.randn(1, 48), torch.zeros(4, 24, dtype=torch.uint8),
                        torch.ones(4, 1), torch.zeros(4, 1), 48, torch.empty(0))
    with pytest.raises(RuntimeError, match="scale"):
        mod.int8_linear(torch.randn(1, 16), torch.zeros(4, 16, dtype=torch.int8), torch.ones(3),
                        torch.empty(0))


@pytest.mark.parametrize("fp8", [False, True])
def test_fake_quant_rows_bit_exact(fp8: bool) -> None:
    from infer.quant.quantize import fake_quant_per_token

    x = torch.randn(7, 300) * torch.logspace(-3, 3, 7)[:, None]
    x[2] = 0.0  # zero row
    x[3, 5] = 1e4  # outlier
    x[4, :] = torch.arange(300) - 150.0  # exact ties at .5 after scaling happen here
    ref = fake_quant_per_token(x, FP8 if fp8 else torch.int8)
    assert torch.equal(mod.fake_quant_rows(x, fp8), ref)


@pytest.mark.parametrize("kind", ["int8", "fp8", "int4"])
@pytest.mark.parametrize("m", [9, 33])
def test_dequant_linear_chunked(kind: str, m: int) -> None:
    n, k = 700, 576  # several ~1 MB chunks of rows
    x, b = torch.randn(m, k), torch.randn(n)
    e = torch.empty(0)
    if kind == "int4":
        codes, scales, zeros = int4_groups(torch.randn(n, k) * 0.05, 64)
        offset = (-zeros.float() * scales).contiguous()
        out = mod.dequant_linear(x, pack_int4_cpu(codes), scales, offset, 2, 64, b)
        ref = F.linear(x, int4_dequant(codes, scales, zeros, 64), b)
    else:
        s = torch.rand(n) * 0.01
        w = (torch.randint(-127, 128, (n, k), dtype=torch.int8) if kind == "int8"
             else (torch.randn(n, k) * 50).to(FP8))
        wb = w if kind == "int8" else w.view(torch.uint8)
        out = mod.dequant_linear(x, wb, s, e, 0 if kind == "int8" else 1, 0, b)
        ref = F.linear(x, w.float() * s[:, None], b)
    _close(out, ref)

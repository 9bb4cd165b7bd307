"""The C++ dense (unquantized) CPU linear kernel against F.linear in float64 (fp32 operands) and
against fp32 math on the same bf16 operands (bf16), plus its wiring into quant=none."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from infer.quant import dense_cpu
from infer.quant.none import NoQuant

mod = dense_cpu.load()
pytestmark = pytest.mark.skipif(mod is None, reason="CPU dense kernel did not build (no compiler?)")
# rows: the 4-row groups, their 1-3 row leftovers, several activation chunks (K=1537: 40 rows each)
ROWS = [1, 2, 3, 4, 5, 7, 16, 33, 100]
# (N, K): tiles of 6/8 weight rows and 24-row blocks with tails; K tails of the 16 / 32 lanes
SHAPES = [(13, 40), (24, 576), (50, 577), (7, 1537), (3, 1), (97, 33)]


def _ref(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Exact-ish reference: the same operands in float64."""
    return F.linear(x.double(), w.double(), None if b is None else b.double())


@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_fp32_matches_float64(m: int, n: int, k: int, bias: bool) -> None:
    torch.manual_seed(m * 1000 + n + k)
    x, w = torch.randn(m, k), torch.randn(n, k)
    b = torch.randn(n) if bias else None
    out = dense_cpu.kernel(x, w, b)
    assert out.dtype == torch.float32 and out.shape == (m, n)
    # fp32 accumulation over K terms of size ~1: error ~ sqrt(K) * 2^-24 * |terms|
    torch.testing.assert_close(out.double(), _ref(x, w, b), atol=1e-5 * k**0.5, rtol=1e-5)
    torch.testing.assert_close(out, F.linear(x, w, b), atol=1e-5 * k**0.5, rtol=1e-5)


@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_bf16_matches_fp32_math(m: int, n: int, k: int, bias: bool) -> None:
    torch.manual_seed(m * 1000 + n + k + 1)
    x, w = torch.randn(m, k).bfloat16(), torch.randn(n, k).bfloat16()
    b = torch.randn(n).bfloat16() if bias else None
    out = dense_cpu.kernel(x, w, b)
    assert out.dtype == torch.bfloat16 and out.shape == (m, n)
    ref = _ref(x, w, b)
    # products of bf16 values are exact in fp32; the result is one bf16 rounding (2^-8
    # relative) away, plus fp32 accumulation error
    torch.testing.assert_close(out.double(), ref, atol=1e-4 * k**0.5, rtol=2**-8)
    torch.testing.assert_close(out, F.linear(x, w, b), atol=1e-4 * k**0.5, rtol=2 * 2**-8)


def test_threads_do_not_change_results() -> None:
    """Each output is summed by one thread in one order: 1 and 2 threads agree bit for bit."""
    x, w = torch.randn(5, 576), torch.randn(960, 576)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = dense_cpu.kernel(x, w)
        torch.set_num_threads(2)
        two = dense_cpu.kernel(x, w)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_leading_dims_and_empty() -> None:
    x, w = torch.randn(2, 3, 40), torch.randn(9, 40)
    torch.testing.assert_close(dense_cpu.kernel(x, w), F.linear(x, w), atol=1e-5, rtol=1e-5)
    assert dense_cpu.kernel(torch.randn(0, 40), w).shape == (0, 9)


def test_bad_input_names_the_problem() -> None:
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        mod.dense_linear(torch.randn(2, 8), torch.randn(3, 8).bfloat16(), torch.empty(0))
    with pytest.raises(RuntimeError, match="K=8"):
        mod.dense_linear(torch.randn(2, 8), torch.randn(3, 9), torch.empty(0))
    with pytest.raises(RuntimeError, match="bias"):
        mod.dense_linear(torch.randn(2, 8), torch.randn(3, 8), torch.randn(4))


def test_dispatch_follows_dtype_and_device() -> None:
    w = torch.randn(4, 8)
    assert dense_cpu.usable(torch.randn(1, 8), w)
    assert not dense_cpu.usable(torch.randn(1, 8).double(), w.double())
    assert not dense_cpu.usable(torch.randn(1, 8).bfloat16(), w)  # mixed dtypes: F.linear


@pytest.mark.parametrize("cpu_kernel", [True, False])
def test_noquant_apply_uses_the_knob(cpu_kernel: bool) -> None:
    """quant=none runs the kernel when cpu_kernel is on, and F.linear itself when off."""
    layer = torch.nn.Module()
    q = NoQuant(cpu_kernel=cpu_kernel)
    q.create_weights(layer, 576, 100, torch.float32)
    layer.weight.data.copy_(torch.randn(100, 576))
    q.process_weights_after_loading(layer)
    x, b = torch.randn(3, 576), torch.randn(100)
    want = dense_cpu.kernel(x, layer.weight, b) if cpu_kernel else F.linear(x, layer.weight, b)
    assert torch.equal(q.apply(layer, x, b), want)

"""Weight-only int8 and group-wise int4 on the dense kernel's 64-column panels: the C++ kernels
against the torch reference in float64, and quant=int8 / int4's lazy repacking (first
forward, after any sharding) against their row-major kernels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from infer.layers.linear import Linear
from infer.quant import dense_cpu
from infer.quant.int4 import Int4WeightOnly, int4_canonical_from_runtime
from infer.quant.int8 import Int8WeightOnly

mod = dense_cpu.load()
pytestmark = pytest.mark.skipif(mod is None, reason="CPU dense kernel did not build (no compiler?)")
# rows: 6-row groups and their 1-5 leftovers, and several activation chunks (100 x 1537)
ROWS = [1, 2, 5, 6, 7, 13, 100]
# (N, K): panels with padded tails (N=13, 97, 130), a 1-wide K, odd K
SHAPES = [(13, 40), (64, 576), (130, 577), (7, 1537), (3, 1), (97, 33)]


def _codes(n: int, k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    return q, torch.rand(n, generator=g) * 0.01 + 1e-4


@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_int8_panel_matches_float64(m: int, n: int, k: int, bias: bool) -> None:
    g = torch.Generator().manual_seed(m * 1000 + n + k)
    q, s = _codes(n, k, g)
    x = torch.randn(m, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    ref = F.linear(x.double(), q.double()) * s.double()
    if b is not None:
        ref = ref + b.double()
    y = dense_cpu.packed_linear_int8(x, dense_cpu.pack(q), n, s, b)
    assert y.dtype == torch.float32 and y.shape == (m, n)
    # fp32 sums of exact products: error ~ sqrt(K) ulps of the row's magnitude
    scale = (x.abs().double() @ q.abs().double().T * s.double()).max().item()
    assert (y.double() - ref).abs().max().item() <= 1e-6 * scale * max(k, 16) ** 0.5 + 1e-6


def test_int8_panel_rejects_wrong_dtypes() -> None:
    q, s = _codes(8, 16, torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="wp int8"):
        mod.packed_linear_int8(torch.randn(2, 16), dense_cpu.pack(q).float(), 8, s, torch.empty(0))
    with pytest.raises(RuntimeError, match="expected"):
        mod.packed_linear_int8(torch.randn(2, 15), dense_cpu.pack(q), 8, s, torch.empty(0))


def _forbidden(*_a: object, **_k: object) -> None:
    raise AssertionError("the row-major fallback ran")


def _layer(method: Int8WeightOnly) -> Linear:
    g = torch.Generator().manual_seed(1)
    lin = Linear(96, [70, 30], True, method, torch.float32, ["a", "b"])
    lin.weight_loader(lin.weight, torch.randn(70, 96, generator=g) * 0.05, "a")
    lin.weight_loader(lin.weight, torch.randn(30, 96, generator=g) * 0.05, "b")
    lin.weight_loader(lin.bias, torch.randn(70, generator=g), "a")
    lin.weight_loader(lin.bias, torch.randn(30, generator=g), "b")
    method.process_weights_after_loading(lin)
    return lin


@pytest.mark.parametrize("rows", [1, 4, 37])
def test_int8_layer_repacks_on_first_forward(rows: int) -> None:
    lin, plain = _layer(Int8WeightOnly()), _layer(Int8WeightOnly(cpu_kernel=False))
    codes = lin.weight.data.clone()
    assert "weight_packed" not in lin._parameters  # row-major until used (sharding happens first)
    x = torch.randn(rows, 96)
    y = lin(x)
    wp = lin._parameters["weight_packed"]
    assert "weight" not in lin._parameters and wp.dtype == torch.int8 and wp.shape == (2, 96, 64)
    assert (wp.output_dim, wp.input_dim, wp.output_pack, wp.rows) == (0, 1, 64, 100)
    assert torch.equal(dense_cpu.unpack_rows(wp, torch.arange(100), 96), codes)
    ref = F.linear(x, codes.float()) * lin.weight_scale + lin.bias
    torch.testing.assert_close(y, ref, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(y, plain(x), atol=2e-5, rtol=1e-5)
    assert "weight" in plain._parameters and "weight_packed" not in plain._parameters
    # later fp32 calls run the panel kernel, never the row-major fallback
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("infer.quant.int8.int8_matmul", _forbidden)
        torch.testing.assert_close(lin(x), y, atol=0, rtol=0)
    # an activation dtype the kernel does not take still works from the packed codes
    yb = lin(x.double())
    torch.testing.assert_close(yb, ref.double(), atol=2e-5, rtol=1e-5)


# (N, K, G): padded panel tails, SmolLM2-like groups, tiny even groups
INT4_SHAPES = [(13, 64, 32), (64, 576, 64), (130, 192, 64), (97, 12, 2), (7, 1536, 32)]


@pytest.mark.parametrize("m", [1, 2, 3, 7, 100])
@pytest.mark.parametrize("n,k,g", INT4_SHAPES)
def test_int4_panel_matches_float64(m: int, n: int, k: int, g: int) -> None:
    gen = torch.Generator().manual_seed(m * 1000 + n + k + g)
    q = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=gen)
    s = torch.rand(n, k // g, generator=gen) * 0.01 + 1e-4
    o = -torch.rand(n, k // g, generator=gen) * 0.08
    x, b = torch.randn(m, k, generator=gen), torch.randn(n, generator=gen)
    w = (q.double().view(n, k // g, g) * s.double()[..., None] + o.double()[..., None]).view(n, k)
    ref = F.linear(x.double(), w, b.double())
    packed = dense_cpu.pack_int4(q, s, o)
    y = dense_cpu.packed_linear_int4(x, *packed[:1], n, *packed[1:], g, b)
    bound = (x.abs().double() @ w.abs().T).max().item()
    assert y.shape == (m, n) and (y.double() - ref).abs().max().item() <= 1e-6 * bound * k**0.5 + 1e-6
    codes, s2, o2 = dense_cpu.unpack_int4(*packed, n)
    assert torch.equal(codes, q) and torch.equal(s2, s) and torch.equal(o2, o)


def _int4_layer(panel: bool) -> Linear:
    method = Int4WeightOnly(group_size=32)
    method.panel_kernel = panel
    g = torch.Generator().manual_seed(2)
    lin = Linear(128, [70, 30], True, method, torch.float32, ["a", "b"])
    lin.weight_loader(lin.weight, torch.randn(70, 128, generator=g) * 0.05, "a")
    lin.weight_loader(lin.weight, torch.randn(30, 128, generator=g) * 0.05, "b")
    lin.weight_loader(lin.bias, torch.randn(70, generator=g), "a")
    lin.weight_loader(lin.bias, torch.randn(30, generator=g), "b")
    method.process_weights_after_loading(lin)
    return lin


@pytest.mark.parametrize("rows", [1, 2, 9])
def test_int4_layer_repacks_on_first_forward(rows: int) -> None:
    lin, rowmajor = _int4_layer(True), _int4_layer(False)
    before = int4_canonical_from_runtime(lin, 32)
    assert "w4" in lin._parameters and "w4_packed" not in lin._parameters
    x = torch.randn(rows, 128)
    y = lin(x)
    assert not {"w4", "w4_scale", "w4_offset"} & set(lin._parameters)
    wp, sp = lin._parameters["w4_packed"], lin._parameters["w4_panel_scale"]
    assert wp.shape == (2, 64, 64) and sp.shape == (2, 4, 64) and wp.rows == 100
    assert (wp.output_pack, wp.input_pack, sp.output_pack, sp.input_group) == (64, 2, 64, 32)
    after = int4_canonical_from_runtime(lin, 32)  # exports still see the same quantization
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    torch.testing.assert_close(y, rowmajor(x), atol=2e-5, rtol=1e-5)
    assert "w4" in rowmajor._parameters
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("infer.quant.int4.dequant_cpu_layout", _forbidden)
        mp.setattr("infer.quant.cpu_kernel.linear", _forbidden)
        torch.testing.assert_close(lin(x), y, atol=0, rtol=0)

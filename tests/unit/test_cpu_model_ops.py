"""The C++ CPU model ops (infer.layers.cpu_ops) against the torch paths they replace.

Oracle: the torch implementations in infer.layers.ops (rms_norm_ref, the torch fused add,
_silu_and_mul_torch, apply_rope with rope_cos_sin factors), which ``kernels=torch`` runs.

Tolerances, and why they can be this tight: the C++ code does the same roundings in the same
order as the torch path (bf16/fp16 results rounded after each op exactly where torch rounds,
no fused multiply-add), so
- rotary is bit-identical in every dtype (a gather, two products and a sum per element);
- the residual sum of fused_add_rms_norm is bit-identical (one add);
- RMSNorm differs only by the order of its sum of squares, and silu only by the exp routine:
  fp32 within a few ulps (4e-6 of max(|value|, 1); 1e-6 relative per element fails on
  ~1e-7 absolute noise near zero); bf16/fp16 within two units of their last place (the
  normalized row is rounded before the weight multiply, so a one-ulp difference there can
  round to two in the output).
Shapes cover T=1 (decode), odd and non-multiple-of-16 widths, strided views (the q/k heads
of a fused qkv row) and enough rows to take the multi-threaded path.
"""

from __future__ import annotations

import pytest
import torch

from infer.layers import cpu_ops
from infer.layers.norm import rms_norm_ref
from infer.layers.ops import _fused_add_rms_norm_torch, _silu_and_mul_torch, resolve_ops
from infer.layers.rotary import apply_rope, rope_cos_sin, rope_cos_sin_cache

pytestmark = pytest.mark.skipif(not cpu_ops.available(), reason="C++ CPU model ops did not build")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# error / max(|value|, 1): fp32 a few ulps; half types two units in the last place
ATOL = {torch.float32: 4e-6, torch.bfloat16: 2**-6, torch.float16: 2**-9}
ROWS = [1, 3, 257]  # decode, a small batch, the threaded path (257 x 577 > one grain)


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    scale = want.float().abs().clamp_min(1.0)
    err = ((got.float() - want.float()).abs() / scale).max().item()
    assert err <= ATOL[dtype], f"max scaled error {err:.3e} > {ATOL[dtype]:.1e} ({dtype})"


@pytest.fixture(scope="module")
def mod():  # type: ignore[no-untyped-def]
    return cpu_ops.load()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t", ROWS)
@pytest.mark.parametrize("h", [576, 577, 64, 7])
def test_rms_norm_and_fused_add(mod, dtype, t, h) -> None:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(t * 1000 + h)
    x = (torch.randn(t, h, generator=g) * 3).to(dtype)
    res = torch.randn(t, h, generator=g).to(dtype)
    x0, res0 = x.clone(), res.clone()
    w = (1 + 0.1 * torch.randn(h, generator=g)).to(dtype)
    _close(mod.rms_norm(x, w, 1e-5), rms_norm_ref(x, w, 1e-5), dtype)
    out, new_res = mod.fused_add_rms_norm(x, res, w, 1e-6)
    want_out, want_res = _fused_add_rms_norm_torch(x, res, w, 1e-6)
    assert torch.equal(new_res, want_res)  # one rounded add, same as torch
    _close(out, want_out, dtype)
    # out of place: the inputs are untouched and the outputs are new tensors
    assert torch.equal(x, x0) and torch.equal(res, res0)
    assert len({out.data_ptr(), new_res.data_ptr(), x.data_ptr(), res.data_ptr()}) == 4


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_on_strided_heads(mod, dtype) -> None:  # type: ignore[no-untyped-def]
    """q/k norms see [T, heads, D] views into the fused qkv row, not contiguous tensors."""
    qkv = torch.randn(5, 12 * 16, dtype=torch.float32).to(dtype)
    q = qkv[:, : 8 * 16].reshape(5, 8, 16)  # strides (192, 16, 1)
    w = torch.rand(16).to(dtype) + 0.5
    got = mod.rms_norm(q, w, 1e-6)
    assert got.shape == (5, 8, 16) and got.is_contiguous()
    _close(got, rms_norm_ref(q, w, 1e-6), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t", ROWS)
@pytest.mark.parametrize("inter", [1536, 37])
def test_silu_and_mul(mod, dtype, t, inter) -> None:  # type: ignore[no-untyped-def]
    x = (torch.randn(t, 2 * inter, generator=torch.Generator().manual_seed(inter + t)) * 4).to(dtype)
    _close(mod.silu_and_mul(x), _silu_and_mul_torch(x), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t", ROWS)
@pytest.mark.parametrize(
    ("head_dim", "rot_dim", "scaling"),
    [
        (64, 64, None),
        (32, 32, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
        (48, 32, {"rope_type": "linear", "factor": 2.0}),  # partial rotary: dims >= 32 kept
    ],
)
def test_rotary_bit_identical(mod, dtype, t, head_dim, rot_dim, scaling) -> None:  # type: ignore[no-untyped-def]
    """q and k heads rotated in one pass inside the fused qkv row (the model's call)."""
    g = torch.Generator().manual_seed(t + head_dim)
    nq, nk = 3, 1
    qkv = torch.randn(t, (nq + 2 * nk) * head_dim, generator=g).to(dtype)
    cos_sin = rope_cos_sin_cache(rot_dim, 4096, 10000.0, scaling)
    pos = torch.randint(0, 4096, (t,), generator=g)
    qk = qkv[:, : (nq + nk) * head_dim].reshape(t, nq + nk, head_dim)
    want = apply_rope(qk, *rope_cos_sin(pos, cos_sin, dtype))
    v_before = qkv[:, (nq + nk) * head_dim :].clone()
    got = mod.rotary(qk, cpu_ops.rope_factors(pos, cos_sin, dtype))
    assert torch.equal(got, want)
    assert got.data_ptr() == qk.data_ptr()  # in place, inside the qkv row
    assert torch.equal(qkv[:, (nq + nk) * head_dim :], v_before)  # v untouched


def test_rotary_rejects_out_of_table_position(mod) -> None:  # type: ignore[no-untyped-def]
    cos_sin = rope_cos_sin_cache(16, 8, 10000.0, None)
    with pytest.raises(RuntimeError, match="position 8"):
        mod.rotary(torch.randn(1, 2, 16), (torch.tensor([8]), cos_sin))


def test_bad_dtype_names_the_op(mod) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeError, match="silu_and_mul: unsupported dtype"):
        mod.silu_and_mul(torch.ones(1, 4, dtype=torch.float64))


def test_resolution() -> None:
    """auto on CPU -> cpp for the model ops, torch for the quant entry points; cpp is CPU
    only; overrides mix impls; rope factors follow the rotary impl."""
    auto = resolve_ops("auto", None, "cpu")
    assert {auto.impls[op] for op in ("rms_norm", "fused_add_rms_norm", "rotary", "silu_and_mul")} == {"cpp"}
    assert auto.impls["awq_gemm"] == "torch" and auto.rope_factors is cpu_ops.rope_factors
    assert resolve_ops("cpp", None, "cpu").impls == auto.impls
    mixed = resolve_ops("cpp", {"rotary": "torch"}, "cpu")
    assert mixed.impls["rotary"] == "torch" and mixed.rope_factors is not cpu_ops.rope_factors
    assert mixed.impls["rms_norm"] == "cpp"
    with pytest.raises(ValueError, match="kernels.impl=cpp runs on CPU only"):
        resolve_ops("cpp", None, "cuda")


def test_silu_and_mul_vector_exp_extremes(mod) -> None:  # type: ignore[no-untyped-def]
    """The fp32 path's vector exp at the ends of its range (0 below -87, inf above 88) and at
    +-inf / NaN: SiLU must still equal the torch path's (-0 or g itself at the ends)."""
    g = torch.tensor([-1e4, -120.0, -88.5, -87.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 87.5, 88.5, 120.0, 1e4,
                      float("-inf"), float("inf"), float("nan")] * 2)
    x = torch.cat([g, torch.linspace(-3, 3, g.numel())])[None]
    got, want = mod.silu_and_mul(x), _silu_and_mul_torch(x)
    assert torch.equal(got.isnan(), want.isnan())
    ok = ~want.isnan()
    torch.testing.assert_close(got[ok], want[ok], rtol=2e-6, atol=1e-30)


@pytest.mark.parametrize("v", [1, 7, 64, 65, 49152])
@pytest.mark.parametrize("rows", [1, 5, 40])
def test_argmax_rows_equals_torch(mod, v, rows) -> None:  # type: ignore[no-untyped-def]
    """Same index as torch.argmax(-1) on every row: random rows, rows of ties (the first of
    equal maxima wins; few distinct values make ties), -inf / +inf rows, NaN (counts as the
    maximum, first one wins), +-0 and a row view with a stride."""
    g = torch.Generator().manual_seed(v * 100 + rows)
    x = torch.randn(rows, v, generator=g)
    ties = torch.randint(0, 3, (rows, v), generator=g).float()
    special = x.clone()
    special[0] = float("-inf")
    if rows > 1:
        special[1, v // 2] = float("nan")
        special[1, -1] = float("nan")
    if rows > 2:
        special[2, v // 3] = float("inf")
        special[2, -1] = float("inf")
    if rows > 3:
        special[3] = 0.0
        special[3, ::2] = -0.0
    wide = torch.randn(rows, v + 5, generator=g)[:, 2 : 2 + v]  # row stride v + 5
    for t in (x, ties, special, wide):
        assert mod.argmax_rows(t).tolist() == t.argmax(-1).tolist()


def test_greedy_tokens_matches_torch() -> None:
    from infer.sampling import greedy_tokens

    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 4, (6, 1000), generator=g).float()
    assert greedy_tokens(x) == x.argmax(-1).tolist()
    assert greedy_tokens(x.double()) == x.argmax(-1).tolist()  # not fp32: torch's path
    with pytest.raises(RuntimeError, match="argmax_rows"):
        cpu_ops.load().argmax_rows(x.double())  # type: ignore[union-attr]

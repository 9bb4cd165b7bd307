"""GPTQ rounding (quant/gptq.py) and its users: quant=fp8 and quant=gptq (int4)."""

from __future__ import annotations

import pytest
import torch

from infer.layers.linear import Linear
from infer.quant.fp8 import FP8WeightAct
from infer.quant.gptq import RESULT_ATTR, gptq_round, hessian
from infer.quant.gptq_int4 import GPTQInt4, int4_grid
from infer.quant.quantize import FP8, fp8_codes, fp8_per_channel, int4_dequant, int4_groups

N, K = 48, 96


def _data(token_seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights [N, K] and correlated inputs [T, K] (a few latent factors mixed into K
    channels, as real activations are), so the Hessian is far from diagonal. The weights and
    the mixing are fixed; ``token_seed`` draws the tokens."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(N, K, generator=g) * 0.05
    mix = torch.randn(12, K, generator=g)
    t = torch.Generator().manual_seed(token_seed)
    x = torch.randn(512, 12, generator=t) @ mix + 0.05 * torch.randn(512, K, generator=t)
    return w, x


def _fp8_grid(w: torch.Tensor):  # type: ignore[no-untyped-def]
    scale = w.abs().amax(1) / 448.0
    return scale, lambda col, _j: fp8_codes(col[:, None], scale).float()[:, 0] * scale


def _out_err(x: torch.Tensor, w: torch.Tensor, q: torch.Tensor) -> float:
    return float((x @ (w - q).T).norm() / (x @ w.T).norm())


@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_beats_nearest_on_correlated_inputs(act_order: bool) -> None:
    w, x = _data()
    scale, to_grid = _fp8_grid(w)
    q = gptq_round(w, hessian(x), to_grid, damp=0.01, block_size=32, act_order=act_order)
    # every weight is on the e4m3 grid of its row's (unchanged) scale
    codes = fp8_codes(q, scale)
    assert torch.equal(codes.float() * scale[:, None], q)
    nearest, s_near = fp8_per_channel(w)
    assert torch.equal(s_near, scale)
    rtn = nearest.float() * scale[:, None]
    assert not torch.equal(codes.view(torch.uint8), nearest.view(torch.uint8))
    # the layer's output error on the calibration inputs drops by well over 2x
    assert _out_err(x, w, q) < 0.5 * _out_err(x, w, rtn)
    # ... and on fresh inputs from the same distribution (not overfit to the calibration set)
    _, x_new = _data(token_seed=2)
    assert _out_err(x_new, w, q) < 0.7 * _out_err(x_new, w, rtn)


def test_gptq_with_diagonal_hessian_is_round_to_nearest() -> None:
    """Uncorrelated inputs: no error can be compensated, so GPTQ must equal plain rounding."""
    w, _ = _data()
    scale, to_grid = _fp8_grid(w)
    h = torch.diag(torch.rand(K) + 0.5)
    q = gptq_round(w, h, to_grid, damp=0.01, block_size=16)
    assert torch.equal(fp8_codes(q, scale).view(torch.uint8), fp8_per_channel(w)[0].view(torch.uint8))


def test_gptq_rank_deficient_hessian_gets_more_dampening() -> None:
    """Fewer calibration tokens than inputs: H is singular; a tiny damp must not crash."""
    w, x = _data()
    _, to_grid = _fp8_grid(w)
    q = gptq_round(w, hessian(x[:8]), to_grid, damp=1e-12)
    assert bool(torch.isfinite(q).all())


def test_gptq_dead_inputs_are_zeroed_and_shapes_checked() -> None:
    w, x = _data()
    x[:, 5] = 0.0  # an input channel never active in calibration
    _, to_grid = _fp8_grid(w)
    q = gptq_round(w, hessian(x), to_grid)
    assert bool((q[:, 5] == 0).all()) and bool(torch.isfinite(q).all())
    with pytest.raises(ValueError, match="h \\[K, K\\]"):
        gptq_round(w, torch.eye(K + 1), to_grid)
    with pytest.raises(ValueError, match="damp"):
        gptq_round(w, hessian(x), to_grid, damp=0.0)


def test_fp8_settings_and_uncalibrated_layer_fail_clearly() -> None:
    with pytest.raises(ValueError, match="rounding"):
        FP8WeightAct(rounding="stochastic")
    with pytest.raises(ValueError, match="damp"):
        FP8WeightAct(damp=-1)
    method = FP8WeightAct()  # rounding=gptq needs prepare_model's calibration first
    lin = Linear(K, [N], False, method, torch.float32, ["w"])
    lin.weight_loader(lin.weight, torch.randn(N, K), "w")
    with pytest.raises(RuntimeError, match="not calibrated"):
        method.process_weights_after_loading(lin)


def test_fp8_gptq_layer_keeps_the_codes_gptq_chose() -> None:
    """prepare_model leaves code * scale in the weight and the scale on the layer;
    processing must store exactly those codes and that scale."""
    w, x = _data()
    method = FP8WeightAct()
    lin = Linear(K, [N], False, method, torch.float32, ["w"])
    lin.weight_loader(lin.weight, w, "w")
    scale, to_grid = _fp8_grid(w)
    q = gptq_round(w, hessian(x), to_grid)
    lin.weight.data.copy_(q)
    setattr(lin, RESULT_ATTR, (fp8_codes(q, scale), scale))
    method.process_weights_after_loading(lin)
    assert lin.weight.dtype == FP8 and torch.equal(lin.weight_scale, scale)
    assert torch.equal(lin.weight.float() * scale[:, None], q)
    assert RESULT_ATTR not in lin.__dict__


def test_int4_gptq_keeps_rtn_groups_and_beats_rtn() -> None:
    """quant=gptq's grid: round-to-nearest's int4 groups (same scales and zeros), codes chosen
    by GPTQ; lower output error than int4 RTN at the same group size."""
    w, x = _data()
    g = 32
    to_grid, encode = int4_grid(w, g)
    q = gptq_round(w, hessian(x), to_grid, block_size=32)
    codes, scales, zeros = encode(q)
    rtn_codes, rtn_scales, rtn_zeros = int4_groups(w, g)
    assert torch.equal(scales, rtn_scales) and torch.equal(zeros, rtn_zeros)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 15
    assert torch.equal(int4_dequant(codes, scales, zeros, g), q)  # every weight on the grid
    assert not torch.equal(codes, rtn_codes)
    rtn = int4_dequant(rtn_codes, rtn_scales, rtn_zeros, g)
    assert _out_err(x, w, q) < 0.5 * _out_err(x, w, rtn)
    _, x_new = _data(token_seed=2)
    assert _out_err(x_new, w, q) < 0.7 * _out_err(x_new, w, rtn)


def test_gptq_int4_method_settings_and_uncalibrated_layer() -> None:
    with pytest.raises(ValueError, match="damp"):
        GPTQInt4(damp=0)
    with pytest.raises(ValueError, match="group_size"):
        GPTQInt4(group_size=0)
    with pytest.raises(ValueError, match="quant=awq"):  # full-precision checkpoints only
        GPTQInt4().accept_checkpoint({"quant_method": "awq", "bits": 4})
    method = GPTQInt4(group_size=32)
    lin = Linear(K, [N], False, method, torch.float32, ["w"])
    lin.weight_loader(lin.weight, torch.randn(N, K), "w")
    with pytest.raises(RuntimeError, match="not calibrated"):
        method.process_weights_after_loading(lin)

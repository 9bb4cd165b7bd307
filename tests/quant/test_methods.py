"""Each QuantMethod on synthetic Linear layers: storage, sharding attributes, fused-shard
loading (incl. AutoAWQ's packed tensors), kernel path == dequantize path, error bounds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from infer.layers.linear import Linear
from infer.quant.awq import AWQ
from infer.quant.fp8 import FP8WeightAct
from infer.quant.int4 import Int4WeightOnly
from infer.quant.int8 import Int8WeightOnly
from infer.quant.none import NoQuant
from infer.quant.quantize import int4_dequant, int4_groups, to_autoawq
from infer.quant.w8a8 import W8A8Int8

K, SIZES = 128, [64, 32, 32]  # a fused q|k|v-like layer


def make(method, bias: bool = True, seed: int = 0):  # type: ignore[no-untyped-def]
    """A fused Linear filled shard by shard through its weight_loader, then processed."""
    g = torch.Generator().manual_seed(seed)
    lin = Linear(K, SIZES, bias, method, torch.float32, ["q", "k", "v"])
    w = torch.randn(sum(SIZES), K, generator=g) * 0.05
    b = torch.randn(sum(SIZES), generator=g) * 0.1
    start = 0
    for sid, n in zip(["q", "k", "v"], SIZES):
        lin.weight_loader(lin.weight, w[start : start + n], sid)
        if bias:
            lin.weight_loader(lin.bias, b[start : start + n], sid)
        start += n
    method.process_weights_after_loading(lin)
    return lin, w, (b if bias else None)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(
    "method,bound",
    [(NoQuant(), 1e-6), (Int8WeightOnly(), 0.01), (FP8WeightAct(rounding="nearest"), 0.06),
     (W8A8Int8(alpha=0.0), 0.02), (Int4WeightOnly(group_size=64), 0.15),
     (Int4WeightOnly(group_size=32), 0.12)],
    ids=["none", "int8", "fp8", "w8a8", "int4-g64", "int4-g32"],
)
@pytest.mark.parametrize("rows", [1, 3, 40])  # 40 rows: the dequantize path
def test_apply_close_to_fp(method, bound: float, rows: int) -> None:  # type: ignore[no-untyped-def]
    lin, w, b = make(method)
    x = torch.randn(rows, K)
    ref = F.linear(x, w, b)
    assert rel_err(lin(x), ref) < bound
    for p in lin.parameters():
        assert hasattr(p, "output_dim") or hasattr(p, "input_dim"), "untagged parameter"


@pytest.mark.parametrize("method", [Int8WeightOnly(cpu_kernel=False), FP8WeightAct(rounding="nearest"), W8A8Int8(alpha=0.0),
                                    Int4WeightOnly(group_size=64)], ids=["int8", "fp8", "w8a8", "int4"])
def test_kernel_paths_equal_torch_path(method, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    lin, _, _ = make(method)
    x = torch.randn(3, K)
    fast = lin(x)
    monkeypatch.setattr("infer.quant.cpu_kernel.KERNEL_MAX_ROWS", 0)
    chunked = lin(x)  # chunked dequantize + GEMM
    monkeypatch.setenv("INFER_DISABLE_CPU_KERNEL", "1")
    monkeypatch.setattr("infer.quant.cpu_kernel.load", lambda: None)
    plain = lin(x)  # pure torch
    torch.testing.assert_close(fast, chunked, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(fast, plain, atol=2e-5, rtol=1e-4)


def test_int8_storage_is_int8_per_channel() -> None:
    lin, w, _ = make(Int8WeightOnly())
    assert lin.weight.dtype == torch.int8 and lin.weight.shape == (128, K)
    assert lin.weight_scale.shape == (128,)
    assert (lin.weight.output_dim, lin.weight.input_dim, lin.weight_scale.output_dim) == (0, 1, 0)
    deq = lin.weight.float() * lin.weight_scale[:, None]
    assert bool(((deq - w).abs() <= lin.weight_scale[:, None] / 2 + 1e-7).all())


def test_int4_cpu_storage_bytes() -> None:
    lin, _, _ = make(Int4WeightOnly(group_size=64))
    assert lin.w4.dtype == torch.uint8 and lin.w4.shape == (128, K // 2)
    assert lin.w4_scale.shape == lin.w4_offset.shape == (128, K // 64)
    assert lin.w4.input_pack == 2 and lin.w4_scale.input_group == 64


def test_awq_prequantized_fused_shards_load_from_autoawq_tensors() -> None:
    """AutoAWQ q/k/v tensors ([K, N/8] int32 ...) land in the fused layer's column ranges."""
    method = AWQ(group_size=64)
    method.accept_checkpoint({"quant_method": "awq", "bits": 4, "group_size": 32,
                              "zero_point": True, "version": "GEMM"})
    assert method.prequantized and method.group_size == 32  # the checkpoint's group size wins
    AWQ().accept_checkpoint({"quant_method": "awq", "bits": 4, "group_size": 128,
                             "modules_to_not_convert": ["lm_head"]})  # lm_head: fine
    lin = Linear(K, SIZES, False, method, torch.float32, ["q", "k", "v"])
    assert lin.qweight.shape == (K, 128 // 8) and lin.qweight.output_pack == 8
    w = torch.randn(128, K) * 0.05
    start, deq = 0, []
    for sid, n in zip(["q", "k", "v"], SIZES):
        codes, scales, zeros = int4_groups(w[start : start + n], 32)
        qw, qz, sc = to_autoawq(codes, scales, zeros)
        for name, t in (("qweight", qw), ("qzeros", qz), ("scales", sc)):
            lin.weight_loader(getattr(lin, name), t, sid)
        deq.append(int4_dequant(codes, scales, zeros, 32))
        start += n
    method.process_weights_after_loading(lin)
    x = torch.randn(2, K)
    torch.testing.assert_close(lin(x), F.linear(x, torch.cat(deq)), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("qc,msg", [
    ({"quant_method": "gptq", "bits": 4}, "quant_method"),
    ({"quant_method": "awq", "bits": 8}, "bits"),
    ({"quant_method": "awq", "bits": 4, "version": "gemv"}, "GEMM"),
    ({"quant_method": "awq", "bits": 4, "modules_to_not_convert": ["visual"]}, "visual"),
])
def test_awq_rejects_other_checkpoints(qc, msg: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=msg):
        AWQ().accept_checkpoint(qc)


@pytest.mark.parametrize("method", [NoQuant(), Int8WeightOnly(), FP8WeightAct(rounding="nearest"), W8A8Int8(),
                                    Int4WeightOnly()], ids=["none", "int8", "fp8", "w8a8", "int4"])
def test_fp_methods_reject_quantized_checkpoints(method) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="quant=awq"):
        method.accept_checkpoint({"quant_method": "awq", "bits": 4, "group_size": 64})
    method.accept_checkpoint(None)  # full precision is fine


def test_bad_settings_fail_clearly() -> None:
    with pytest.raises(ValueError, match="alpha"):
        W8A8Int8(alpha=1.5)
    with pytest.raises(ValueError, match="group_size"):
        Int4WeightOnly(group_size=0)
    with pytest.raises(ValueError, match="calib"):
        AWQ(calib={"num_seq": 4})
    with pytest.raises(ValueError, match="group_size"):
        make(Int4WeightOnly(group_size=96))

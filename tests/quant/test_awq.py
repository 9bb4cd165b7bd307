"""AWQ: the searches beat round-to-nearest, folding is exact, AutoAWQ save/load round-trips."""

from __future__ import annotations

import gc
import json

import pytest
import torch
from quant_settings import calib_overrides  # type: ignore[import-not-found]
from safetensors.torch import load_file

from infer import LLM
from infer.quant.awq import search_clip, search_scale
from infer.quant.awq_format import save_awq_checkpoint
from infer.quant.fold import fold_input_scale, producers
from infer.quant.quantize import int4_fake_quant


def _outlier_problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(96, 128, generator=g) * 0.05
    x = torch.randn(512, 128, generator=g)
    x[:, [3, 40, 77]] *= 30.0  # salient input channels, as in real LLM activations
    return w, x


def _err(w: torch.Tensor, wq: torch.Tensor, x: torch.Tensor) -> float:
    return float((x @ wq.t() - x @ w.t()).pow(2).mean())


def test_scale_search_beats_rtn_on_outlier_channels() -> None:
    w, x = _outlier_problem()
    rtn = _err(w, int4_fake_quant(w, 64), x)
    s = search_scale(w, x, 64, n_grid=20, duo=True)
    awq = _err(w, int4_fake_quant(w * s, 64) / s, x)
    assert awq < 0.8 * rtn, (awq, rtn)
    assert float(s[[3, 40, 77]].min()) > float(s.median())  # salient channels scaled up


def test_scale_search_never_worse_than_rtn() -> None:
    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(64, 128, generator=g), torch.randn(256, 128, generator=g)
    s = search_scale(w, x, 64, n_grid=10, duo=False)
    assert _err(w, int4_fake_quant(w * s, 64) / s, x) <= _err(w, int4_fake_quant(w, 64), x) + 1e-9


def test_clip_search_never_worse_per_group() -> None:
    w, x = _outlier_problem(2)
    w[:, 5] *= 8  # heavy-tailed weights: clipping pays
    mx = search_clip(w, x, 64, n_grid=20, max_shrink=0.5, rows_per_batch=40)
    assert mx.shape == (96, 2)
    full = w.reshape(96, 2, 64).abs().amax(-1)
    assert bool((mx <= full + 1e-7).all()) and bool((mx >= 0.5 * full - 1e-7).all())
    clipped = torch.maximum(torch.minimum(w.reshape(96, 2, 64), mx[..., None]), -mx[..., None])
    assert _err(w, int4_fake_quant(clipped.reshape(96, 128), 64), x) <= _err(w, int4_fake_quant(w, 64), x)


@pytest.mark.parametrize("folder_fixture", ["tiny_folder", "mha_tiny"])
def test_folding_scales_is_exact(folder_fixture: str, request, oracle) -> None:  # type: ignore[no-untyped-def]
    """Every producer fold (norms, up rows, and v rows when there is no GQA) leaves the
    full-precision logits unchanged."""
    folder = request.getfixturevalue(folder_fixture)
    # the folds edit [N, K] weights after loading: keep them unpacked (F.linear path)
    llm = LLM(model=str(folder), kv_cache_tokens=4096, overrides=["quant.method.cpu_kernel=false"])
    model = llm.engine.runner.model
    ids = list(range(200, 240))
    before = oracle.engine_logits(llm, ids)
    prods = producers(model)
    folded = [n for n, p in prods.items() if p is not None]
    if folder_fixture == "mha_tiny":
        assert "layers.0.self_attn.o_proj" in folded
    else:
        assert prods["layers.0.self_attn.o_proj"] is None  # GQA: not foldable
    g = torch.Generator().manual_seed(0)
    for n in folded:
        k = model.get_submodule(n).in_features
        fold_input_scale(model, n, prods[n], torch.rand(k, generator=g) * 3 + 0.2)  # type: ignore[arg-type]
    after = oracle.engine_logits(llm, ids)
    torch.testing.assert_close(after, before, atol=2e-4, rtol=2e-4)
    del llm
    gc.collect()


@pytest.mark.parametrize("quant", ["awq", "int4", "gptq"])
def test_autoawq_checkpoint_roundtrip(quant: str, mha_tiny, tmp_path, oracle) -> None:  # type: ignore[no-untyped-def]
    """quant=awq (and int4, gptq) -> AutoAWQ GEMM folder -> quant=awq loads it: identical
    logits (GPTQ's codes sit on int4's grid, so the same layout stores them)."""
    ov = calib_overrides(quant, tmp_path / "cache") + ["quant.group_size=32"]
    src = LLM(model=str(mha_tiny), quant=quant, kv_cache_tokens=4096, overrides=ov)
    ids = list(range(300, 340))
    want = oracle.engine_logits(src, ids)
    out = save_awq_checkpoint(src.engine.runner.model, src.model_path, tmp_path / "awq")
    del src
    gc.collect()

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"] == {"quant_method": "awq", "bits": 4, "group_size": 32,
                                          "zero_point": True, "version": "gemm",
                                          "modules_to_not_convert": None}
    t = load_file(str(out / "model.safetensors"))
    k, n = 64, 64  # hidden 64, 4 heads x 16
    assert t["model.layers.0.self_attn.k_proj.qweight"].shape == (k, n // 8)
    assert t["model.layers.0.self_attn.k_proj.qweight"].dtype == torch.int32
    assert t["model.layers.0.self_attn.k_proj.qzeros"].shape == (k // 32, n // 8)
    assert t["model.layers.0.self_attn.k_proj.scales"].shape == (k // 32, n)
    assert t["model.layers.0.self_attn.k_proj.scales"].dtype == torch.float16
    assert t["model.layers.1.mlp.down_proj.qweight"].shape == (128, 64 // 8)
    assert "lm_head.weight" in t and "model.layers.0.input_layernorm.weight" in t
    assert not any(name.endswith(".weight") and "proj" in name for name in t)

    back = LLM(model=str(out), quant="awq", kv_cache_tokens=4096)
    assert back.engine.runner.model.layers[0].self_attn.qkv_proj.quant.prequantized
    torch.testing.assert_close(oracle.engine_logits(back, ids), want, atol=1e-5, rtol=1e-5)
    del back
    gc.collect()
    with pytest.raises(ValueError, match="quant=awq"):
        LLM(model=str(out), kv_cache_tokens=4096)


def test_awq_calibration_cache_reused(tiny_folder, tmp_path, oracle) -> None:  # type: ignore[no-untyped-def]
    ov = calib_overrides("awq", tmp_path)
    a = LLM(model=str(tiny_folder), quant="awq", kv_cache_tokens=4096, overrides=ov)
    la = oracle.engine_logits(a, list(range(10, 50)))
    del a
    files = list((tmp_path / "quant_calib").glob("awq-*.pt"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    b = LLM(model=str(tiny_folder), quant="awq", kv_cache_tokens=4096, overrides=ov)
    torch.testing.assert_close(oracle.engine_logits(b, list(range(10, 50))), la, atol=0, rtol=0)
    assert files[0].stat().st_mtime_ns == stamp  # read, not recomputed
    del b
    c = LLM(model=str(tiny_folder), quant="awq", kv_cache_tokens=4096,
            overrides=[*ov, "quant.group_size=32"])
    del c
    gc.collect()
    assert len(list((tmp_path / "quant_calib").glob("awq-*.pt"))) == 2  # new settings, new key

"""Parallel loading cuts every decoder layer to the rank's shard as soon as the layer is
filled (a rank holds its shard plus at most one full layer), unless the quant method
calibrates on the full model."""

from __future__ import annotations

import pytest
import torch

from infer.models import loader
from infer.parallel import shard
from infer.parallel.state import ParallelState
from infer.quant.int8 import Int8WeightOnly
from infer.quant.none import NoQuant
from infer.quant.w8a8 import W8A8Int8


def _load(folder, quant, monkeypatch: pytest.MonkeyPatch, state: ParallelState) -> tuple:
    events: list[tuple[str, str]] = []
    cut = shard.cut_layer
    read = loader.iter_safetensors

    def cut_spy(model, idx, st):  # type: ignore[no-untyped-def]
        events.append(("cut", str(idx)))
        cut(model, idx, st)

    def read_spy(f):  # type: ignore[no-untyped-def]
        for name, t in read(f):
            events.append(("load", name))
            yield name, t

    monkeypatch.setattr(shard, "cut_layer", cut_spy)
    monkeypatch.setattr(loader, "iter_safetensors", read_spy)
    model = loader.load_model(folder, quant, torch.float32, torch.device("cpu"), 64, parallel=state)
    return model, events


@pytest.mark.parametrize("quant", [NoQuant(), Int8WeightOnly()], ids=["none", "int8"])
def test_layers_are_cut_while_loading(tiny_checkpoint, monkeypatch: pytest.MonkeyPatch, quant) -> None:
    folder = tiny_checkpoint("llama")
    model, events = _load(folder, quant, monkeypatch, ParallelState(tp_size=2, tp_rank=1))
    loads = [i for i, e in enumerate(events) if e[0] == "load"]
    cut0 = events.index(("cut", "0"))
    assert cut0 < loads[-1], "layer 0 was cut only after the whole checkpoint was read"
    a = model.args
    attn = model.layers[0].self_attn
    assert (attn.nh, attn.nkv) == (a.num_heads // 2, a.num_kv_heads // 2)
    assert attn.o_proj.in_features == a.head_dim * a.num_heads // 2


def test_w8a8_streams_only_without_calibration(tiny_checkpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tiny_checkpoint("llama")
    q = W8A8Int8(alpha=0.0)  # alpha 0: no calibration, so it may stream
    assert not q.calibrates and W8A8Int8().calibrates
    _, events = _load(folder, q, monkeypatch, ParallelState(pp_size=2, pp_rank=1))
    loads = [i for i, e in enumerate(events) if e[0] == "load"]
    assert events.index(("cut", "0")) < loads[-1]

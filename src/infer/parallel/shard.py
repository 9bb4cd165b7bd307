"""Cut a loaded model down to this rank's shard (Megatron-style tensor parallelism) and
pipeline stage.

Parameters are narrowed through their tags (quant/base.py ``set_dims``): ``output_dim`` /
``input_dim`` say which axis holds outputs / inputs, ``output_pack`` / ``input_pack`` how many
logical elements share one stored element, ``input_group`` how many inputs share one stored
element (group-wise scales). No quant class is named here.

Order: a method whose ``process_weights_after_loading`` is local to every output row and input
group (``shard_local = True``: packing, group-wise rounding) is sharded first and processed on
its shard; any other method (per-channel scales over the whole input row, for example) is
processed on the full matrix and its results are sharded, so codes and scales equal the
one-process ones.
"""

from __future__ import annotations

import torch
from torch import nn

from infer.layers.linear import Linear
from infer.parallel.partition import even_split, head_shard, split_unit, stage_layers
from infer.parallel.state import ParallelState

Range = tuple[int, int]  # (start, size) in logical elements


def _narrow(t: torch.Tensor, dim: int, start: int, size: int, per: int, what: str) -> torch.Tensor:
    if start % per or size % per:
        raise ValueError(f"cannot shard {what}: range ({start}, {size}) is not a multiple of {per}")
    return t.narrow(dim, start // per, size // per)


def narrow_param(p: nn.Parameter, out_ranges: list[Range] | None, in_range: Range | None,
                 name: str) -> torch.Tensor:
    """The part of ``p`` for the given logical output ranges (concatenated in order) and
    input range; axes without a tag are kept whole."""
    t = p.data
    od, idim = getattr(p, "output_dim", None), getattr(p, "input_dim", None)
    if out_ranges is not None and od is not None:
        per = int(getattr(p, "output_pack", 1))
        t = torch.cat([_narrow(t, od, a, n, per, name) for a, n in out_ranges], dim=od)
    if in_range is not None and idim is not None:
        per = int(getattr(p, "input_pack", 1)) * int(getattr(p, "input_group", 1))
        t = _narrow(t, idim, in_range[0], in_range[1], per, name)
    return t.contiguous()


def shard_linear(lin: Linear, name: str, out_ranges: list[Range] | None = None,
                 in_range: Range | None = None) -> None:
    """Replace ``lin``'s parameters by their shards and update its logical sizes.
    ``out_ranges``: one range per fused output shard (column parallel); ``in_range``: the
    input slice (row parallel). A row-parallel layer's bias stays whole: it is added once,
    after the all-reduce (Linear.forward)."""
    for pname, p in list(lin._parameters.items()):
        if p is None:
            continue
        rng = None if (pname == "bias" and in_range is not None) else out_ranges
        new = nn.Parameter(narrow_param(p, rng, in_range, f"{name}.{pname}"), requires_grad=False)
        new.__dict__.update(p.__dict__)  # tags, weight_loader
        lin._parameters[pname] = new
    if out_ranges is not None:
        lin.out_sizes = [n for _, n in out_ranges]
        lin.out_features = sum(lin.out_sizes)
    if in_range is not None:
        lin.in_features = in_range[1]


def _process(lin: Linear) -> None:
    lin.quant.process_weights_after_loading(lin)


def _linear(lin: Linear, name: str, out_ranges: list[Range] | None, in_range: Range | None) -> None:
    """Shard and process one Linear in the order its method allows (module docstring)."""
    if getattr(lin.quant, "shard_local", False):
        shard_linear(lin, name, out_ranges, in_range)
        _process(lin)
    else:
        _process(lin)
        shard_linear(lin, name, out_ranges, in_range)


def cut_layer(model: nn.Module, idx: int, state: ParallelState) -> None:
    """Cut decoder layer ``idx`` to this rank: drop it if another stage runs it, else shard
    (tensor parallel) and process its Linear layers."""
    a = model.args  # type: ignore[attr-defined]
    tp, r = state.tp_size, state.tp_rank
    if idx not in stage_layers(a.num_layers, state.pp_size, state.pp_rank):
        model.layers[idx] = nn.Identity()  # type: ignore[index]  (frees another stage's weights)
        return
    layer = model.layers[idx]  # type: ignore[index]
    attn, mlp, pre = layer.self_attn, layer.mlp, f"layers.{idx}"
    if tp == 1:
        for lin in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj):
            _process(lin)
        return
    hd, inter = a.head_dim, a.intermediate_size
    hs = head_shard(a.num_heads, a.num_kv_heads, tp, r)
    nq, nkv = a.num_heads * hd, a.num_kv_heads * hd
    qkv = [(hs.q_start * hd, hs.num_q * hd), (nq + hs.kv_start * hd, hs.num_kv * hd),
           (nq + nkv + hs.kv_start * hd, hs.num_kv * hd)]
    _linear(attn.qkv_proj, f"{pre}.self_attn.qkv_proj", qkv, None)
    _linear(attn.o_proj, f"{pre}.self_attn.o_proj", None, (hs.q_start * hd, hs.num_q * hd))
    attn.o_proj.tp_reduce = state.tp_comm
    attn.nh, attn.nkv = hs.num_q, hs.num_kv
    i0, ni = even_split(inter, tp, r, split_unit(inter, tp))
    _linear(mlp.gate_up_proj, f"{pre}.mlp.gate_up_proj", [(i0, ni), (inter + i0, ni)], None)
    _linear(mlp.down_proj, f"{pre}.mlp.down_proj", None, (i0, ni))
    mlp.down_proj.tp_reduce = state.tp_comm
    mlp.inter = ni


class LayerCutter:
    """Cuts each decoder layer as soon as the loader has filled all of its tensors, so a rank
    never holds more than its shard plus one full layer (``on_loaded`` is the loader's
    per-tensor callback). Only for methods that need no full-model calibration."""

    def __init__(self, model: nn.Module, state: ParallelState) -> None:
        self.model, self.state = model, state
        self.left: dict[int, set[str]] = {}
        for name in model.expected_weights():  # type: ignore[attr-defined]
            if name.startswith("layers."):
                self.left.setdefault(int(name.split(".")[1]), set()).add(name)
        self.done: set[int] = set()

    def on_loaded(self, name: str) -> bool:
        """Record one loaded tensor; True when that completed (and cut) its layer."""
        if not name.startswith("layers."):
            return False
        idx = int(name.split(".")[1])
        left = self.left.get(idx)
        if left is None or idx in self.done:
            return False
        left.discard(name)
        if left:
            return False
        cut_layer(self.model, idx, self.state)
        self.done.add(idx)
        return True


def shard_model(model: nn.Module, state: ParallelState, done: set[int] | None = None) -> None:
    """Keep this rank's layers (pipeline) and shards (tensor), then process the weights
    (quantize / pack). Replaces the loader's per-Linear processing step for parallel runs;
    ``quant.prepare_model`` (calibration) has already run on the full model. ``done``: layers
    a ``LayerCutter`` already cut while loading."""
    a = model.args  # type: ignore[attr-defined]
    tp, r = state.tp_size, state.tp_rank
    for idx in range(a.num_layers):
        if idx not in (done or set()):
            cut_layer(model, idx, state)
    model.set_stage(stage_layers(a.num_layers, state.pp_size, state.pp_rank), state)  # type: ignore[attr-defined]
    if tp > 1:
        unit = split_unit(a.vocab_size, tp)
        shards = [even_split(a.vocab_size, tp, i, unit) for i in range(tp)]
        model.shard_vocab(shards, r, state.tp_comm)  # type: ignore[attr-defined]
    model.process_weights_after_loading()  # type: ignore[attr-defined]  (packs the LM head)

"""The Llama family in one implementation: Llama 2/3 (llama3 rope scaling), Mistral,
Qwen2/2.5 (qkv bias, tied embeddings), Qwen3 (q/k RMSNorm), SmolLM2.

Tokens of all sequences in a step are packed along one dim T (no padding); attention
separates them through the ForwardContext's metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from infer.forward_context import ForwardContext
from infer.layers.linear import Linear
from infer.layers.norm import RMSNorm
from infer.layers.ops import Ops, RopeFactors, torch_ops
from infer.layers.rotary import rope_cos_sin_cache
from infer.models.config import ModelArgs
from infer.models.decoder_stack import StackSlot
from infer.quant import dense_cpu
from infer.quant.base import QuantMethod

# checkpoint projection name -> (our fused module name, shard id)
STACKED = {
    "q_proj": ("qkv_proj", "q"),
    "k_proj": ("qkv_proj", "k"),
    "v_proj": ("qkv_proj", "v"),
    "gate_proj": ("gate_up_proj", "gate"),
    "up_proj": ("gate_up_proj", "up"),
}


class LlamaAttention(nn.Module):
    """Fused qkv projection, optional q/k norm, rope, backend attention, output projection."""

    def __init__(
        self, a: ModelArgs, layer_idx: int, quant: QuantMethod, dtype: torch.dtype, ops: Ops
    ) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.ops = ops
        self.nh, self.nkv, self.hd = a.num_heads, a.num_kv_heads, a.head_dim
        self.scale = self.hd**-0.5
        self.qkv_proj = Linear(
            a.hidden_size, [self.nh * self.hd, self.nkv * self.hd, self.nkv * self.hd],
            a.qkv_bias, quant, dtype, ["q", "k", "v"],
        )
        self.o_proj = Linear(self.nh * self.hd, a.hidden_size, a.o_bias, quant, dtype)
        self.q_norm = RMSNorm(self.hd, a.rms_norm_eps, dtype, ops) if a.qk_norm else None
        self.k_norm = RMSNorm(self.hd, a.rms_norm_eps, dtype, ops) if a.qk_norm else None

    def forward(self, x: torch.Tensor, rope: RopeFactors, ctx: ForwardContext) -> torch.Tensor:
        """x [T, hidden]; rope = per-step factors from ``ops.rope_factors`` -> [T, hidden]."""
        t = x.shape[0]
        qkv = self.qkv_proj(x)
        nq, nk = self.nh * self.hd, self.nkv * self.hd
        v = qkv[:, nq + nk :].reshape(t, self.nkv, self.hd)
        if self.q_norm is not None and self.k_norm is not None:
            q = self.ops.rotary(self.q_norm(qkv[:, :nq].reshape(t, self.nh, self.hd)), rope)
            k = self.ops.rotary(self.k_norm(qkv[:, nq : nq + nk].reshape(t, self.nkv, self.hd)), rope)
        else:
            # q and k are adjacent in qkv: rotate both heads groups in one pass
            qk = self.ops.rotary(qkv[:, : nq + nk].reshape(t, self.nh + self.nkv, self.hd), rope)
            q, k = qk[:, : self.nh], qk[:, self.nh :]
        o = ctx.backend.forward(q, k, v, ctx.kv_caches[self.layer_idx], ctx.metadata, self.scale)
        return self.o_proj(o.reshape(t, self.nh * self.hd))


class LlamaMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)) with gate|up fused."""

    def __init__(self, a: ModelArgs, quant: QuantMethod, dtype: torch.dtype, ops: Ops) -> None:
        super().__init__()
        self.ops = ops
        self.inter = a.intermediate_size
        self.gate_up_proj = Linear(
            a.hidden_size, [self.inter, self.inter], a.mlp_bias, quant, dtype, ["gate", "up"]
        )
        self.down_proj = Linear(self.inter, a.hidden_size, a.mlp_bias, quant, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.ops.silu_and_mul(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block; the residual stream is carried separately so norms can fuse the add."""

    def __init__(
        self, a: ModelArgs, idx: int, quant: QuantMethod, dtype: torch.dtype, ops: Ops
    ) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(a, idx, quant, dtype, ops)
        self.mlp = LlamaMLP(a, quant, dtype, ops)
        self.input_layernorm = RMSNorm(a.hidden_size, a.rms_norm_eps, dtype, ops)
        self.post_attention_layernorm = RMSNorm(a.hidden_size, a.rms_norm_eps, dtype, ops)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        rope: RopeFactors,
        ctx: ForwardContext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = x
            x = self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(x, rope, ctx)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class LlamaForCausalLM(nn.Module):
    """Decoder stack + LM head. ``forward`` returns final hidden states [T, hidden];
    ``compute_logits`` maps selected rows to fp32 logits [N, vocab]. ``ops`` (from the
    kernels config; None = all torch) supplies norm, rope and activation math."""

    def __init__(
        self,
        args: ModelArgs,
        quant: QuantMethod,
        dtype: torch.dtype,
        max_positions: int,
        ops: Ops | None = None,
    ) -> None:
        super().__init__()
        self.args = args
        self.ops = ops if ops is not None else torch_ops()
        # _weight=empty skips the random init: the loader overwrites it anyway
        self.embed_tokens = nn.Embedding(
            args.vocab_size, args.hidden_size,
            _weight=torch.empty(args.vocab_size, args.hidden_size, dtype=dtype), _freeze=True,
        )
        self.layers = nn.ModuleList(
            [LlamaDecoderLayer(args, i, quant, dtype, self.ops) for i in range(args.num_layers)]
        )
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps, dtype, self.ops)
        if args.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False, dtype=dtype,
                                     device="meta").to_empty(device=torch.get_default_device())
            self.lm_head.weight.requires_grad_(False)
        self.max_positions = max_positions
        # parallel runs narrow these (set_stage / shard_vocab); one process keeps them whole
        self.layer_range = range(args.num_layers)  # the layers this pipeline stage runs
        self.first_stage = self.last_stage = True
        self.vocab_shards = [(0, args.vocab_size)]  # (start, size) per tensor rank
        self.tp_rank = 0
        self.tp_comm: Any = None  # Communicator of the tensor-parallel group, None = unsharded
        # LM head through the C++ dense kernel on CPU when the quant method asks for it
        # (quant=none's cpu_kernel; methods without the knob keep the [V, H] tensors, which
        # checkpoint writers such as awq_format read); ``head_packed`` is set by
        # process_weights_after_loading
        self.cpu_kernel = bool(getattr(quant, "cpu_kernel", False))
        self.register_parameter("head_packed", None)
        # the decoder layers as one C++ call, built on first use (models/decoder_stack.py)
        self.stack_slot = StackSlot()
        # cos/sin filled by init_rope() once the weights are loaded
        self.register_buffer("cos_sin", torch.empty(max_positions, args.head_dim), persistent=False)

    def init_rope(self) -> None:
        """Fill the cos/sin table (call after moving off the meta device)."""
        a = self.args
        self.cos_sin = rope_cos_sin_cache(
            a.head_dim, self.max_positions, a.rope_theta, a.rope_scaling
        ).to(self.norm.weight.device)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        """input_ids, positions: int64 [T] -> hidden [T, hidden] (model dtype)."""
        x, residual = self.run_layers(self.embed(input_ids), None, positions, ctx)
        return self.final_norm(x, residual)

    def run_layers(
        self, x: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor,
        ctx: ForwardContext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This stage's decoder layers: (x, residual) [T, hidden] in -> out (residual None
        before the first layer of the model)."""
        return self.run_layer_list(list(self.layer_range), x, residual, positions, ctx)

    def run_layer_list(
        self, which: list[int], x: torch.Tensor, residual: torch.Tensor | None,
        positions: torch.Tensor, ctx: ForwardContext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder layers ``which`` (model indices, in order) on (x, residual) [T, hidden]:
        one C++ call when the decoder stack applies (``ops.decoder_stack``; see
        models/decoder_stack.py), else the eager loop, its oracle."""
        stack = self.stack_slot.get(self, ctx, x) if self.ops.decoder_stack else None
        if stack is not None:
            return stack.run(which, x, residual, positions, self.cos_sin, ctx)
        rope = self.ops.rope_factors(positions, self.cos_sin, x.dtype)
        for i in which:
            x, residual = self.layers[i](x, residual, rope, ctx)
        assert residual is not None, "a stage runs at least one layer"
        return x, residual

    def final_norm(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """Last stage: the final RMSNorm of x + residual -> hidden [T, hidden]."""
        x, _ = self.norm(x, residual)
        return x

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings: int64 [T] -> [T, hidden] (model dtype). Vocab-parallel: each
        rank looks up the ids in its slice (zeros elsewhere) and the ranks sum, exactly."""
        if self.tp_comm is None:
            return self._lookup(input_ids)
        v0, nv = self.vocab_shards[self.tp_rank]
        local = input_ids - v0
        inside = (local >= 0) & (local < nv)
        x = self._lookup(torch.where(inside, local, 0))
        x = x * inside.unsqueeze(1).to(x.dtype)
        return self.tp_comm.all_reduce_sum(x.contiguous())

    def _lookup(self, ids: torch.Tensor) -> torch.Tensor:
        if self.embed_tokens is None:  # tied and packed: the lookup reads the LM head's panels
            return dense_cpu.unpack_rows(self.head_packed, ids, self.args.hidden_size)
        return F.embedding(ids, self.embed_tokens.weight)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] -> fp32 logits [N, vocab]. Vocab-parallel: every tensor rank
        computes its slice and all of them receive the whole (a layer-skipping draft running
        on the sharded model samples on every rank)."""
        nv = self.vocab_shards[self.tp_rank][1]
        if self.head_packed is not None:
            local = dense_cpu.packed_linear(hidden, self.head_packed, nv).float()
        else:
            w = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
            local = F.linear(hidden, w).float()
        if self.tp_comm is None:
            return local
        # gather concatenates along dim 0 with equal shapes: send [nv_max, N], padded
        width = max(n for _, n in self.vocab_shards)
        send = hidden.new_zeros((width, hidden.shape[0]), dtype=torch.float32)
        send[:nv] = local.t()
        got = self.tp_comm.all_gather(send)
        parts = [got[r * width : r * width + n] for r, (_, n) in enumerate(self.vocab_shards)]
        return torch.cat(parts).t().contiguous()

    def set_stage(self, layers: range, state: Any) -> None:
        """Keep only ``layers`` (a pipeline stage): the embedding on the first stage, the
        final norm and LM head on the last (tied embeddings: the first and the last keep the
        matrix, each for its own use)."""
        self.layer_range = layers
        self.first_stage, self.last_stage = state.is_first_stage, state.is_last_stage
        for i in range(self.args.num_layers):
            if i not in layers:
                self.layers[i] = nn.Identity()  # frees the weights of other stages
        tied = self.args.tie_word_embeddings
        if not self.first_stage and not (tied and self.last_stage):
            self.embed_tokens = None  # type: ignore[assignment]
        if not self.last_stage:
            self.lm_head = None

    def shard_vocab(self, shards: list[tuple[int, int]], tp_rank: int, comm: Any) -> None:
        """Vocab-parallel embedding and LM head: keep rows [start, start + size) of this
        rank's entry in ``shards`` (one (start, size) per tensor rank)."""
        self.vocab_shards, self.tp_rank, self.tp_comm = shards, tp_rank, comm
        v0, nv = shards[tp_rank]
        for mod in (self.embed_tokens, self.lm_head):
            if mod is not None:
                mod.weight = nn.Parameter(mod.weight.data[v0 : v0 + nv].contiguous(), requires_grad=False)

    def process_weights_after_loading(self) -> None:
        """Pack the LM head for the CPU dense kernel (``cpu_kernel`` on, CPU, fp32/bf16). Tied
        embeddings keep one copy: the packed matrix, from which the token lookup gathers rows."""
        tied = self.args.tie_word_embeddings
        src = self.embed_tokens if tied else self.lm_head
        if src is None:  # a pipeline stage without the LM head
            return
        w = src.weight
        if not (self.cpu_kernel and dense_cpu.usable(w)):
            return
        self.head_packed = nn.Parameter(dense_cpu.pack(w.data), requires_grad=False)
        if tied:
            self.embed_tokens = None  # type: ignore[assignment]
        else:
            self.lm_head = None  # type: ignore[assignment]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]],
                     on_loaded: Callable[[str], bool] | None = None) -> set[str]:
        """Copy checkpoint tensors (HF names) into parameters, one at a time.

        Returns the set of parameter names that were filled; raises on unknown names.
        ``on_loaded(name)`` is called after each (names as in ``expected_weights``); it
        returns True when it replaced that tensor's decoder layer (its old tensors are dropped).
        """
        # names -> parameters; a cut layer (on_loaded) drops its entries so its full-size
        # tensors are freed at once
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name:
                continue
            name = name.removeprefix("model.")
            if name == "lm_head.weight" and self.lm_head is None:
                continue  # tied to the embedding
            shard = None
            for ckpt, (fused, sid) in STACKED.items():
                if f".{ckpt}." in name:
                    name, shard = name.replace(f".{ckpt}.", f".{fused}."), sid
                    break
            if name not in params:
                raise ValueError(f"checkpoint tensor {name!r} has no matching model parameter")
            p = params[name]
            loader = getattr(p, "weight_loader", None)
            if loader is not None:
                loader(p, tensor, shard)
            else:
                if tuple(p.shape) != tuple(tensor.shape):
                    raise ValueError(
                        f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, "
                        f"model expects {tuple(p.shape)}"
                    )
                p.data.copy_(tensor)
            key = name if shard is None else f"{name}:{shard}"
            loaded.add(key)
            if on_loaded is not None and on_loaded(key):
                prefix = ".".join(name.split(".")[:2]) + "."  # "layers.<i>."
                for n in [n for n in params if n.startswith(prefix)]:
                    del params[n]
        return loaded

    def expected_weights(self) -> set[str]:
        """Names ``load_weights`` must have filled for a complete checkpoint."""
        names: set[str] = set()
        for n, p in self.named_parameters():
            mod = self.get_submodule(n.rsplit(".", 1)[0]) if "." in n else self
            shards = getattr(mod, "shard_names", None)
            if isinstance(mod, Linear) and len(mod.out_sizes) > 1:
                names.update(f"{n}:{s}" for s in shards)  # type: ignore[union-attr]
            else:
                names.add(n)
        return names

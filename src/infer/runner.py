"""ModelRunner: owns the model and the KV memory, builds per-step tensors, runs forward."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from infer import hugepages
from infer.attention.base import AttentionBackend, SeqSlice
from infer.forward_context import ForwardContext
from infer.models.llama import LlamaForCausalLM
from infer.quant.kv_cache import KVLayer, QuantizedKVLayer, is_quantized, scale_bytes_per_token
from infer.scheduler import ScheduledSeq


@dataclass(frozen=True)
class KVSpec:
    """Geometry of the paged KV memory. ``dtype`` is the storage dtype: the model's, or
    int8 / float8_e4m3fn codes with per-token-per-head fp32 scales (quant/kv_cache.py)."""

    num_blocks: int
    block_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def bytes_per_token(self) -> int:
        elem = torch.empty((), dtype=self.dtype).element_size()
        codes = 2 * self.num_layers * self.num_kv_heads * self.head_dim * elem
        return codes + scale_bytes_per_token(self.num_layers, self.num_kv_heads, self.dtype)

    @property
    def num_tokens(self) -> int:
        return self.num_blocks * self.block_size


def cache_tensor(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zeroed KV-cache tensor. On CPU it lies on 2 MiB pages (``infer.hugepages``): decode
    attention reads each sequence's blocks scattered over the whole cache, and on 4 KiB pages
    nearly every 4 KiB block read is a TLB miss."""
    if device.type == "cpu":
        return hugepages.empty(shape, dtype).zero_()
    return torch.zeros(shape, dtype=dtype, device=device)


class ModelRunner:
    """Runs one forward over the packed tokens of a scheduled batch."""

    def __init__(
        self,
        model: LlamaForCausalLM,
        backend: AttentionBackend,
        kv: KVSpec,
        device: torch.device,
        layers: list[int] | None = None,
    ) -> None:
        """``layers``: the layer indices that get a KV cache (None = all ``kv.num_layers``);
        a layer-skipping draft allocates only the layers it runs."""
        self.model = model
        self.backend = backend
        self.kv = kv
        self.device = device
        # the backend owns its cache layout (default [NB, BS, Hk, D] for both K and V)
        bind = getattr(backend, "bind", None)
        if bind is not None:
            k_shape, v_shape = bind(kv, device)
        else:
            k_shape = v_shape = (kv.num_blocks, kv.block_size, kv.num_kv_heads, kv.head_dim)
        keep = set(range(kv.num_layers) if layers is None else layers)
        sshape = (kv.num_blocks, kv.block_size, kv.num_kv_heads)

        def layer_cache(i: int) -> tuple[torch.Tensor, ...] | None:
            if i not in keep:
                return None
            kc, vc = cache_tensor(k_shape, kv.dtype, device), cache_tensor(v_shape, kv.dtype, device)
            if is_quantized(kv.dtype):  # codes + fp32 scales [NB, BS, Hk]
                return QuantizedKVLayer(kc, vc, torch.zeros(sshape, device=device), torch.zeros(sshape, device=device))
            return KVLayer(kc, vc)

        self.kv_caches = [layer_cache(i) for i in range(kv.num_layers)]

    @torch.inference_mode()
    def execute(
        self, batch: list[ScheduledSeq], block_tables: list[list[int]], logit_rows: list[int]
    ) -> torch.Tensor:
        """Forward the batch's fed tokens (committed + draft, ``ScheduledSeq.token_ids``);
        return fp32 logits [len(logit_rows), vocab] for the given packed rows (row r = r-th
        fed token of the packed batch)."""
        ids, positions, ctx = self.prepare(batch, block_tables)
        hidden = self.model(ids, positions, ctx)
        rows = torch.tensor(logit_rows, dtype=torch.long, device=self.device)
        return self.model.compute_logits(hidden.index_select(0, rows))

    def prepare(
        self, batch: list[ScheduledSeq], block_tables: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, ForwardContext]:
        """The packed fed tokens of ``batch`` (committed, then this step's draft): token ids and
        positions, int64 [T], and the attention context planned over them."""
        ids: list[int] = []
        pos: list[int] = []
        slices = []
        for item, table in zip(batch, block_tables):
            start, n = item.seq.num_computed_tokens, item.num_fed
            ids.extend(item.token_ids)
            pos.extend(range(start, start + n))
            slices.append(SeqSlice(start, n, table))
        md = self.backend.plan(slices, self.kv.block_size, self.device)
        return (torch.tensor(ids, dtype=torch.long, device=self.device),
                torch.tensor(pos, dtype=torch.long, device=self.device),
                ForwardContext(self.backend, md, self.kv_caches))

    def agree(self, accepted: dict[int, list[int] | Exception]) -> dict[int, list[int] | Exception]:
        """Accepted tokens per sequence id as every rank must commit them (one process: as
        given; ParallelModelRunner: the output rank's)."""
        return accepted

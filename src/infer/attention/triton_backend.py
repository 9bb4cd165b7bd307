"""``attention=triton``: paged KV with the Triton kernels of ``infer_kernels``.

Per layer: ``store_kvcache`` writes the step's k/v into the paged cache, then the decodes
(ordered first in the metadata) go through ``paged_decode_attention`` (split-K for long
contexts) and the prefill/extend chunks through ``paged_prefill_attention`` (their cached
prefix and their own fresh k/v, both read from the paged cache). Everything the kernels
need besides q/k/v is sliced once per step in ``plan``.

On a GPU these are compiled kernels. Without CUDA they run under the Triton interpreter
(switched on by ``infer.kernel_select``): correct, very slow, for verification only; the
interpreter mis-loads bf16, so fp32/fp16 models only there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from infer.attention.base import AttentionMetadata, SeqSlice, build_metadata
from infer.kernel_select import triton_op
from infer.quant.kv_cache import layer_is_quantized


@dataclass
class TritonPlan:
    """Per-step kernel arguments, split into the decode part and the prefill part.

    decode_*: the first ``num_decodes`` sequences (one query each);
    prefill_*: the rest, with query_start_loc rebased to start at 0 for them.
    """

    decode_block_tables: torch.Tensor  # int32 [Bd, max_blocks]
    decode_context_lens: torch.Tensor  # int32 [Bd]
    prefill_block_tables: torch.Tensor  # int32 [Bp, max_blocks]
    prefill_query_start_loc: torch.Tensor  # int32 [Bp + 1]
    prefill_context_lens: torch.Tensor  # int32 [Bp]


class TritonBackend:
    """Paged attention with Triton kernels (store + decode + prefill).

    Args:
        num_splits: split-K factor of the decode kernel; None = the kernel's heuristic
            (splits only contexts over 1024 tokens with few (seq, kv_head) programs).
    """

    name = "triton"

    def __init__(self, num_splits: int | None = None) -> None:
        if num_splits is not None and int(num_splits) < 1:
            raise ValueError(f"attention.backend.num_splits must be None or >= 1, got {num_splits}")
        self.num_splits = None if num_splits is None else int(num_splits)
        self._device: torch.device | None = None
        self._store: Callable[..., None]
        self._decode: Callable[..., torch.Tensor]
        self._prefill: Callable[..., torch.Tensor]

    def _load(self, device: torch.device) -> None:
        """Resolve the launchers once, for the device of the first step."""
        if self._device == device:
            return
        self._store = triton_op("store_kvcache", device)
        self._decode = triton_op("paged_decode_attention", device)
        self._prefill = triton_op("paged_prefill_attention", device)
        self._device = device

    def plan(
        self, seqs: list[SeqSlice], block_size: int, device: torch.device
    ) -> AttentionMetadata:
        """Generic metadata plus the decode/prefill kernel arguments (``extra["triton"]``)."""
        if block_size < 16 or block_size & (block_size - 1):
            raise ValueError(
                f"attention.block_size={block_size}: the Triton kernels need a power of two >= 16"
            )
        self._load(torch.device(device))
        md = build_metadata(seqs, block_size, device)
        nd = md.num_decodes
        md.extra["triton"] = TritonPlan(
            decode_block_tables=md.block_tables[:nd],
            decode_context_lens=md.context_lens[:nd],
            prefill_block_tables=md.block_tables[nd:],
            # decodes have one query each, so the prefill part starts at row nd
            prefill_query_start_loc=md.query_start_loc[nd:] - nd,
            prefill_context_lens=md.context_lens[nd:],
        )
        return md

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        metadata: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        """q [T, Hq, D], k/v [T, Hk, D] (views with a contiguous last dim are fine); stores
        k/v at ``metadata.slot_mapping``, then attends. Returns [T, Hq, D] in q's dtype."""
        if q.dtype == torch.bfloat16 and q.device.type != "cuda":
            raise ValueError(
                "attention=triton off CUDA runs under the Triton interpreter, which mis-loads "
                "bfloat16; use model.dtype=float32/float16 or another attention backend"
            )
        k_cache, v_cache = kv_cache[0], kv_cache[1]
        # int8/fp8 caches carry per-token-per-head scales (quant/kv_cache.py); the kernels
        # quantize on store and dequantize in the dot products
        ks, vs = (kv_cache[2], kv_cache[3]) if layer_is_quantized(kv_cache) else (None, None)
        self._store(k, v, k_cache, v_cache, metadata.slot_mapping, ks, vs)
        p: TritonPlan = metadata.extra["triton"]
        nd = metadata.num_decodes
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        if nd:
            self._decode(
                q[:nd],
                k_cache,
                v_cache,
                p.decode_block_tables,
                p.decode_context_lens,
                scale,
                k_scale=ks,
                v_scale=vs,
                num_splits=self.num_splits,
                out=out[:nd],
            )
        if nd < metadata.num_seqs:
            self._prefill(
                q[nd:],
                k_cache,
                v_cache,
                p.prefill_block_tables,
                p.prefill_query_start_loc,
                p.prefill_context_lens,
                scale,
                k_scale=ks,
                v_scale=vs,
                out=out[nd:],
            )
        return out

"""Pure-torch references: the numerical contract of every kernel, and the CPU path.

Each ``<op>_ref`` has the same signature as the Triton launcher ``<op>``. Importing this
package never imports Triton.
"""

from .activation import silu_and_mul_ref
from .attention import paged_decode_attention_ref, paged_prefill_attention_ref
from .gemm import awq_gemm_ref, fp8_scaled_gemm_ref, w8a8_int8_gemm_ref
from .kvcache import gather_kv_ref, store_kvcache_ref
from .norm import fused_add_rms_norm_ref, rms_norm_ref
from .quant import (
    awq_dequantize_ref,
    awq_pack,
    awq_unpack,
    quantize_last_dim,
    quantize_per_token_fp8,
    quantize_per_token_fp8_ref,
    quantize_per_token_int8,
    quantize_per_token_int8_ref,
)
from .rotary import rotary_embedding_ref

__all__ = [
    "awq_dequantize_ref",
    "awq_gemm_ref",
    "awq_pack",
    "awq_unpack",
    "fp8_scaled_gemm_ref",
    "fused_add_rms_norm_ref",
    "gather_kv_ref",
    "paged_decode_attention_ref",
    "paged_prefill_attention_ref",
    "quantize_last_dim",
    "quantize_per_token_fp8",
    "quantize_per_token_fp8_ref",
    "quantize_per_token_int8",
    "quantize_per_token_int8_ref",
    "rms_norm_ref",
    "rotary_embedding_ref",
    "silu_and_mul_ref",
    "store_kvcache_ref",
    "w8a8_int8_gemm_ref",
]

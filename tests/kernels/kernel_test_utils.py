"""Shared helpers for the kernel tests (imported by conftest and the test modules).

Importing this module sets TRITON_INTERPRET=1 when no CUDA device exists; it must happen
before any ``@triton.jit`` function is created, i.e. before the kernel modules are imported.
conftest.py imports it first, so every test module of this folder sees the interpreter.
Named uniquely so that pytest's rootless imports cannot confuse it with another folder's file.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
QUANT_KV = (torch.int8, torch.float8_e4m3fn)

# Kernel-vs-reference tolerances (atol, rtol) per activation dtype. fp32: the kernels use IEEE
# fp32 dots, only the summation order differs. fp16/bf16: flash-style kernels round the
# softmax probabilities to the input dtype before the P @ V dot.
TOL = {
    torch.float32: (2e-5, 2e-5),
    torch.float16: (4e-3, 1e-2),
    torch.bfloat16: (3e-2, 3e-2),
}


def float_dtypes() -> list:
    """fp32 and fp16 everywhere; bf16 only on a real GPU (the interpreter mis-loads bf16)."""
    bf16 = pytest.param(
        torch.bfloat16,
        marks=pytest.mark.skipif(DEVICE == "cpu", reason="Triton interpreter mis-loads bf16"),
    )
    return [torch.float32, torch.float16, bf16]


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    dtype: torch.dtype | None = None,
    atol: float | None = None,
    rtol: float | None = None,
) -> None:
    """Compare in fp32 with the per-dtype tolerance; NaN anywhere (poisoned output) fails."""
    a_tol, r_tol = TOL[dtype or expected.dtype]
    assert not torch.isnan(actual.float()).any(), "output has NaN: some elements were not written"
    torch.testing.assert_close(
        actual.float(),
        expected.float(),
        atol=a_tol if atol is None else atol,
        rtol=r_tol if rtol is None else rtol,
    )


class PagedKV:
    """A paged KV cache filled with random K/V for ragged sequences (via the reference store).

    Blocks are handed out in a shuffled order so block tables are non-trivial, and the
    block table has one spare (padding) column. ``dense_k[i]`` / ``dense_v[i]`` are the
    fp32 [ctx_i, Hkv, D] values the cache should hold (dequantized if the cache is quantized),
    computed without reading the cache: the oracle for the naive dense-math tests.
    """

    def __init__(
        self, context_lens, num_kv_heads, head_dim, block_size, dtype, cache_dtype=None, seed=0
    ):
        from infer_kernels.reference import quantize_last_dim, store_kvcache_ref

        g = torch.Generator().manual_seed(seed)
        cache_dtype = cache_dtype or dtype
        self.block_size = block_size
        num_seqs = len(context_lens)
        max_blocks = max(-(-c // block_size) for c in context_lens) + 1
        num_blocks = num_seqs * max_blocks + 2
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        self.k_cache = torch.zeros(shape, dtype=cache_dtype)
        self.v_cache = torch.zeros(shape, dtype=cache_dtype)
        self.k_scale = self.v_scale = None
        if cache_dtype in QUANT_KV:
            self.k_scale = torch.zeros(shape[:3], dtype=torch.float32)
            self.v_scale = torch.zeros(shape[:3], dtype=torch.float32)
        perm = torch.randperm(num_blocks, generator=g)[: num_seqs * max_blocks]
        self.block_tables = perm.view(num_seqs, max_blocks).to(torch.int32)
        self.dense_k, self.dense_v = [], []
        for i, ctx in enumerate(context_lens):
            k = torch.randn(ctx, num_kv_heads, head_dim, generator=g).to(dtype)
            v = torch.randn(ctx, num_kv_heads, head_dim, generator=g).to(dtype)
            pos = torch.arange(ctx)
            slots = self.block_tables[i, pos // block_size].long() * block_size + pos % block_size
            store_kvcache_ref(k, v, self.k_cache, self.v_cache, slots, self.k_scale, self.v_scale)
            for x, dense in ((k, self.dense_k), (v, self.dense_v)):
                if cache_dtype in QUANT_KV:
                    q, s = quantize_last_dim(x, cache_dtype)
                    dense.append(q.float() * s.unsqueeze(-1))
                else:
                    dense.append(x.to(cache_dtype).float())
        self.context_lens = torch.tensor(context_lens, dtype=torch.int32)
        for name in ("k_cache", "v_cache", "k_scale", "v_scale", "block_tables", "context_lens"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(DEVICE))


def poison(like: torch.Tensor) -> torch.Tensor:
    """A NaN-filled tensor like ``like``: any element a kernel fails to write shows up."""
    return torch.full_like(like, float("nan"))

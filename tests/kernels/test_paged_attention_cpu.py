"""The C++ CPU paged-attention kernel (src/infer/attention/csrc/paged_attention_cpu.cpp)
against causal attention written out in float64 over the same cache contents.

One call serves a whole step, so every case mixes the shapes a step can hold: decodes,
verify-like short chunks over a cached prefix, prefix extensions and fresh prompts. The
fast tiled path (head dim 32/64/128/256, blocks of 16k keys) and the generic path (other
sizes) are both covered; cache slots past each context are filled with NaN, which must
never reach an output.
"""

from __future__ import annotations

import pytest
import torch

from infer.attention import cpu_kernel

pytestmark = pytest.mark.skipif(not cpu_kernel.available(), reason="no C++ compiler for the CPU kernel")


def _build(
    new: list[int], ctx: list[int], hq: int, hk: int, d: int, bs: int, seed: int
) -> tuple[torch.Tensor, ...]:
    """Random q, caches in the kernel layout (NaN outside the contexts, blocks scattered),
    and the metadata; k/v per sequence are returned for the reference."""
    g = torch.Generator().manual_seed(seed)
    nblocks = [(c + bs - 1) // bs for c in ctx]
    nb = sum(nblocks) + 3
    kc_shape, vc_shape = cpu_kernel.kv_cache_shapes(nb, bs, hk, d)
    kc = torch.full(kc_shape, float("nan"))
    vc = torch.full(vc_shape, float("nan"))
    order = torch.randperm(nb, generator=g).tolist()
    bt = torch.zeros(len(ctx), max(nblocks), dtype=torch.int32)
    kvs = []
    at = 0
    for b, c in enumerate(ctx):
        blocks = order[at : at + nblocks[b]]
        at += nblocks[b]
        bt[b, : len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
        k = torch.randn(c, hk, d, generator=g)
        v = torch.randn(c, hk, d, generator=g)
        slots = torch.tensor([blocks[p // bs] * bs + p % bs for p in range(c)], dtype=torch.int64)
        cpu_kernel.store_kv(k, v, kc, vc, slots)
        kvs.append((k, v))
    qsl = torch.tensor([0, *torch.tensor(new).cumsum(0).tolist()], dtype=torch.int32)
    q = torch.randn(int(qsl[-1]), hq, d, generator=g) * 2.0  # peaky softmax rows too
    return q, kc, vc, bt, qsl, torch.tensor(ctx, dtype=torch.int32), kvs


def _reference(q: torch.Tensor, kvs: list, new: list[int], ctx: list[int], scale: float) -> torch.Tensor:
    out = torch.empty(q.shape, dtype=torch.float64)
    hq, hk = q.shape[1], kvs[0][0].shape[1]
    t0 = 0
    for (k, v), n, c in zip(kvs, new, ctx):
        for i in range(n):
            pos = c - n + i
            for h in range(hq):
                kh, vh = k[: pos + 1, h // (hq // hk)].double(), v[: pos + 1, h // (hq // hk)].double()
                p = torch.softmax(kh @ q[t0 + i, h].double() * scale, 0)
                out[t0 + i, h] = p @ vh
        t0 += n
    return out


CASES = [
    # (new tokens per sequence, context lengths, Hq, Hk, D, block size)
    ([1] * 5, [1, 17, 33, 200, 64], 9, 3, 64, 16),  # decodes (SmolLM2's heads)
    ([1, 1, 4, 40, 37], [300, 16, 20, 40, 100], 9, 3, 64, 16),  # decode, verify, fresh, extend
    ([70, 1, 3], [70, 129, 131], 8, 2, 128, 16),  # D 128, G 4
    ([5, 1, 33], [9, 48, 65], 4, 4, 32, 32),  # MHA, 32-key blocks (two slices per block)
    ([1, 12, 20], [50, 12, 45], 6, 2, 80, 16),  # D 80: generic path
    ([1, 9], [30, 25], 4, 1, 64, 8),  # 8-key blocks: generic path
    ([3, 1], [19, 260], 2, 1, 256, 16),  # D 256
]


@pytest.mark.parametrize("new,ctx,hq,hk,d,bs", CASES)
def test_kernel_matches_float64_attention(new: list[int], ctx: list[int], hq: int, hk: int, d: int, bs: int) -> None:
    q, kc, vc, bt, qsl, cl, kvs = _build(new, ctx, hq, hk, d, bs, seed=len(new) * 7 + d)
    scale = d**-0.5
    out = cpu_kernel.paged_attention(q, kc, vc, bt, qsl, cl, scale)
    ref = _reference(q, kvs, new, ctx, scale)
    assert torch.isfinite(out).all(), "a NaN from an unused cache slot reached the output"
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-5)


def test_thread_count_does_not_change_results() -> None:
    """Tiles are independent, so the output is bit-identical whatever the threads."""
    new, ctx = [1, 1, 64, 7], [90, 333, 64, 40]
    q, kc, vc, bt, qsl, cl, _ = _build(new, ctx, 9, 3, 64, 16, seed=3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu_kernel.paged_attention(q, kc, vc, bt, qsl, cl, 0.125)
        torch.set_num_threads(2)
        two = cpu_kernel.paged_attention(q, kc, vc, bt, qsl, cl, 0.125)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_a_row_does_not_depend_on_the_rows_beside_it() -> None:
    """The last new token of a sequence gets the same bits whether it is decoded alone or with
    1..11 tokens before it in the step (a verify or a prefill chunk): its (token, head) rows then
    sit in tiles of different sizes and different last keys (the context crosses two 64-key
    softmax blocks), whose sums must not change order with the tile."""
    q, kc, vc, bt, _qsl, cl, _ = _build([12], [140], 9, 3, 64, 16, seed=5)
    outs = []
    for n in range(1, 13):
        qn = q[-n:].contiguous()
        qsl_n = torch.tensor([0, n], dtype=torch.int32)
        outs.append(cpu_kernel.paged_attention(qn, kc, vc, bt, qsl_n, cl, 0.125)[-1])
    for n, o in enumerate(outs[1:], start=2):
        assert torch.equal(o, outs[0]), f"the last token's output changed with {n} tokens in the step"


def test_block_table_entries_past_the_context_are_never_read() -> None:
    """A block table row is only meaningful up to its context's last block; what lies past it
    (stale ids, -1, out-of-range garbage) must not be dereferenced or change any bit."""
    new, ctx = [1, 1, 20], [70, 5, 150]
    q, kc, vc, bt, qsl, cl, _ = _build(new, ctx, 9, 3, 64, 16, seed=7)
    clean = cpu_kernel.paged_attention(q, kc, vc, bt, qsl, cl, 0.125)
    wide = torch.cat([bt, torch.zeros(bt.shape[0], 4, dtype=torch.int32)], dim=1)
    for b, c in enumerate(ctx):
        used = (c + 15) // 16
        wide[b, used:] = torch.tensor([-1, 2**30, -(2**30), 123456789] * 4, dtype=torch.int32)[: wide.shape[1] - used]
    assert torch.equal(cpu_kernel.paged_attention(q, kc, vc, wide, qsl, cl, 0.125), clean)


def test_bad_metadata_is_refused() -> None:
    q, kc, vc, bt, qsl, cl, _ = _build([2, 1], [5, 9], 4, 2, 64, 16, seed=1)
    with pytest.raises(RuntimeError, match="new tokens <= context"):
        cpu_kernel.paged_attention(q, kc, vc, bt, qsl, torch.tensor([1, 9], dtype=torch.int32), 0.125)
    with pytest.raises(RuntimeError, match="query_start_loc"):
        cpu_kernel.paged_attention(q, kc, vc, bt, qsl[:2], cl[:1] * 0 + 5, 0.125)


def test_strided_views_of_a_fused_qkv_row_are_read_in_place() -> None:
    """The model passes q, k, v as views into one [T, (Hq + 2 Hk) D] projection output."""
    hq, hk, d, bs, n = 9, 3, 64, 16, 37
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(n, (hq + 2 * hk) * d, generator=g)
    q = qkv[:, : hq * d].view(n, hq, d)
    k = qkv[:, hq * d : (hq + hk) * d].view(n, hk, d)
    v = qkv[:, (hq + hk) * d :].view(n, hk, d)
    assert not q.is_contiguous() and not k.is_contiguous()
    nb = (n + bs - 1) // bs
    shapes = cpu_kernel.kv_cache_shapes(nb, bs, hk, d)
    caches = [torch.zeros(s) for s in shapes]
    caches2 = [torch.zeros(s) for s in shapes]
    slots = torch.arange(n, dtype=torch.int64)
    cpu_kernel.store_kv(k, v, *caches, slots)
    cpu_kernel.store_kv(k.contiguous(), v.contiguous(), *caches2, slots)
    assert all(torch.equal(a, b) for a, b in zip(caches, caches2))
    meta = (torch.arange(nb, dtype=torch.int32)[None], torch.tensor([0, n], dtype=torch.int32),
            torch.tensor([n], dtype=torch.int32))
    strided = cpu_kernel.paged_attention(q, *caches, *meta, 0.125)
    dense = cpu_kernel.paged_attention(q.contiguous(), *caches, *meta, 0.125)
    assert torch.equal(strided, dense)
    ref = _reference(q, [(k, v)], [n], [n], 0.125)
    torch.testing.assert_close(strided.double(), ref, atol=2e-5, rtol=2e-5)

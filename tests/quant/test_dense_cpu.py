"""The C++ dense (unquantized) CPU linear kernel on packed weights against F.linear in float64
(fp32 and bf16 operands), its packing, and its wiring into quant=none."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from infer.quant import dense_cpu
from infer.quant.none import NoQuant

mod = dense_cpu.load()
pytestmark = pytest.mark.skipif(mod is None, reason="CPU dense kernel did not build (no compiler?)")
# rows: 6-row groups and their 1-5 leftovers; 100 rows at K=1537 span several activation chunks
ROWS = [1, 2, 3, 4, 5, 6, 7, 16, 33, 100]
# (N, K): 64-column panels with padded tails (N=13, 97, 130), odd K (bf16 pairs), K=1
SHAPES = [(13, 40), (64, 576), (130, 577), (7, 1537), (3, 1), (97, 33)]


def _ref(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Exact-ish reference: the same operands in float64."""
    return F.linear(x.double(), w.double(), None if b is None else b.double())


@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_fp32_matches_float64(m: int, n: int, k: int, bias: bool) -> None:
    torch.manual_seed(m * 1000 + n + k)
    x, w = torch.randn(m, k), torch.randn(n, k)
    b = torch.randn(n) if bias else None
    out = dense_cpu.kernel(x, w, b)
    assert out.dtype == torch.float32 and out.shape == (m, n)
    # fp32 accumulation over K terms of size ~1: error ~ sqrt(K) * 2^-24 * |terms|
    torch.testing.assert_close(out.double(), _ref(x, w, b), atol=1e-5 * k**0.5, rtol=1e-5)
    torch.testing.assert_close(out, F.linear(x, w, b), atol=1e-5 * k**0.5, rtol=1e-5)


@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_bf16_matches_fp32_math(m: int, n: int, k: int, bias: bool) -> None:
    torch.manual_seed(m * 1000 + n + k + 1)
    x, w = torch.randn(m, k).bfloat16(), torch.randn(n, k).bfloat16()
    b = torch.randn(n).bfloat16() if bias else None
    out = dense_cpu.kernel(x, w, b)
    assert out.dtype == torch.bfloat16 and out.shape == (m, n)
    ref = _ref(x, w, b)
    # products of bf16 values are exact in fp32; the result is one bf16 rounding (2^-8
    # relative) away, plus fp32 accumulation error
    torch.testing.assert_close(out.double(), ref, atol=1e-4 * k**0.5, rtol=2**-8)
    torch.testing.assert_close(out, F.linear(x, w, b), atol=1e-4 * k**0.5, rtol=2 * 2**-8)


def _kind_call(kind: str, n: int, k: int, bias: bool):  # type: ignore[no-untyped-def]
    """A packed layer of ``kind`` (fp32, bf16, int8 codes, int4 codes, G = 64) with random
    weights [n, k] (and a random bias): returns f(x) -> its packed kernel's output."""
    g = torch.Generator().manual_seed(n + k)
    b = torch.randn(n, generator=g) if bias else None
    if kind in ("fp32", "bf16"):
        dt = torch.float32 if kind == "fp32" else torch.bfloat16
        wp = dense_cpu.pack(torch.randn(n, k, generator=g).to(dt))
        bd = None if b is None else b.to(dt)
        return lambda x: dense_cpu.packed_linear(x.to(dt), wp, n, bd)
    if kind == "int8":
        q = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
        scale = torch.rand(n, generator=g) * 0.01 + 1e-4
        wp8 = dense_cpu.pack(q)
        return lambda x: dense_cpu.packed_linear_int8(x, wp8, n, scale, b)
    q4 = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=g)
    s4, o4 = torch.rand(n, k // 64, generator=g) * 0.01, -torch.rand(n, k // 64, generator=g) * 0.08
    packed = dense_cpu.pack_int4(q4, s4, o4)
    return lambda x: dense_cpu.packed_linear_int4(x, packed[0], n, packed[1], packed[2], 64, b)


# (N, threads): how the bands cut the panels (few rows: thread b owns the panels' 16-column
# vectors [b * tasks / threads, (b + 1) * tasks / threads)): 576 and 960 at 2 threads cut one
# panel in halves; 320 at 3 threads leaves windows of 2, 2, 1 and 3 vectors; 40 at 2 threads
# gives the second thread a window with 8 real columns, 20 at 2 threads one that holds only
# padding; 576 at 3 threads and 128 at 2 threads divide into whole panels
SPLITS = [(576, 2), (960, 2), (320, 3), (40, 2), (20, 2), (576, 3), (128, 2)]


@pytest.mark.parametrize("kind", ["fp32", "bf16", "int8", "int4"])
@pytest.mark.parametrize("m", [1, 2, 5, 7])
@pytest.mark.parametrize("bias", [False, True])
def test_threads_do_not_change_results(kind: str, m: int, bias: bool) -> None:
    """Each output is summed by one thread in one order: more threads give the same bits as
    one, also where the panels do not divide over the threads and a band starts or ends
    inside a panel (SPLITS), for leftover rows (1, 2, 5) and a full 6-row group plus one (7)."""
    torch.manual_seed(m)
    before = torch.get_num_threads()
    try:
        for n, threads in SPLITS:
            f = _kind_call(kind, n, 576, bias)
            x = torch.randn(m, 576)
            torch.set_num_threads(1)
            one = f(x)
            torch.set_num_threads(threads)
            assert torch.equal(f(x), one), f"N={n} at {threads} threads"
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("kind", ["fp32", "int8", "int4"])
def test_taking_work_from_another_band_keeps_the_bits(kind: str) -> None:
    """Few-row calls split dynamically: a thread done with its band takes whole panels from the
    back of another's. With more threads than cores (6 on a 2-core machine) the threads are
    descheduled at random and the bands end unevenly, so panels change hands from call to call;
    every call must still give the single-thread bits (each column summed once, in one order)."""
    torch.manual_seed(3)
    before = torch.get_num_threads()
    try:
        for n in (64 * 37, 64 * 37 + 24):  # uneven panels; a padded last panel
            f = _kind_call(kind, n, 576, True)
            for m in (1, 2):
                # two inputs in turn: a piece no thread took would show the other one's stale
                # output (a freed buffer comes back), not a plausible copy of the right one
                xs = [torch.randn(m, 576), torch.randn(m, 576)]
                torch.set_num_threads(1)
                ones = [f(x) for x in xs]
                for threads in (2, 3, 6):
                    torch.set_num_threads(threads)
                    for rep in range(16):
                        got = f(xs[rep % 2])
                        assert torch.equal(got, ones[rep % 2]), f"N={n} m={m} at {threads} threads, call {rep}"
    finally:
        torch.set_num_threads(before)


def test_a_row_does_not_depend_on_the_batch() -> None:
    """A row's outputs are the same bits whatever rows share its call and whatever threads run
    it: alone (a single stream), as a leftover row of a tile, or in a full tile of a row part
    (2 threads split a panel's rows when the panels do not divide over them)."""
    torch.manual_seed(0)
    x, w = torch.randn(19, 576), torch.randn(960, 576)
    wp = dense_cpu.pack(w)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ref = dense_cpu.packed_linear(x, wp, 960)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for start, m in ((0, 1), (5, 1), (0, 2), (6, 1), (0, 7), (3, 8), (0, 13), (0, 19)):
                got = dense_cpu.packed_linear(x[start : start + m].contiguous(), wp, 960)
                assert torch.equal(got, ref[start : start + m]), f"rows {start}..{start + m} at {threads} thread(s)"
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("kind", ["fp32", "int8"])
@pytest.mark.parametrize("k", [576, 1537])
def test_k_blocked_rows_equal_rows_alone(kind: str, k: int) -> None:
    """12-41 rows take the panel in blocks of 64 k, parking the sums between blocks; a row's
    bits must not change: each row of such a call (2-6 row groups, leftover rows of 1-5, a
    partial last k block at K=1537) equals the same row run alone (whole-K order), and rows
    42-48 (whole-K tiles) agree too. At 3 threads 12-17 rows are few enough for the dynamic
    split, whose windows of 1-3 vectors then take the k-blocked order as well."""
    torch.manual_seed(k)
    f = _kind_call(kind, 200, k, True)
    x = torch.randn(48, k)
    alone = torch.cat([f(x[i : i + 1].contiguous()) for i in range(48)])
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            for m in (12, 13, 14, 15, 16, 17, 24, 35, 41, 42, 48):
                assert torch.equal(f(x[:m].contiguous()), alone[:m]), f"{m} rows at {threads} thread(s)"
    finally:
        torch.set_num_threads(before)


def test_leading_dims_and_empty() -> None:
    x, w = torch.randn(2, 3, 40), torch.randn(9, 40)
    torch.testing.assert_close(dense_cpu.kernel(x, w), F.linear(x, w), atol=1e-5, rtol=1e-5)
    assert dense_cpu.kernel(torch.randn(0, 40), w).shape == (0, 9)


def test_pack_and_unpack_rows_round_trip() -> None:
    """The packed matrix is the only copy of a tied embedding: its rows must come back exact."""
    for dt, k in ((torch.float32, 576), (torch.bfloat16, 577)):
        w = torch.randn(130, k).to(dt)
        wp = dense_cpu.pack(w)
        ids = torch.tensor([0, 5, 63, 64, 127, 128, 129, 5])
        assert torch.equal(dense_cpu.unpack_rows(wp, ids, k), w[ids])


def test_bad_input_names_the_problem() -> None:
    wp = dense_cpu.pack(torch.randn(3, 8))
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        mod.packed_linear(torch.randn(2, 8).bfloat16(), wp, 3, torch.empty(0))
    with pytest.raises(RuntimeError, match="N=3, K=9"):
        mod.packed_linear(torch.randn(2, 9), wp, 3, torch.empty(0))
    with pytest.raises(RuntimeError, match="bias"):
        mod.packed_linear(torch.randn(2, 8), wp, 3, torch.randn(4))


def test_usable_follows_dtype_and_device() -> None:
    assert dense_cpu.usable(torch.randn(4, 8))
    assert dense_cpu.usable(torch.randn(4, 8).bfloat16())
    assert not dense_cpu.usable(torch.randn(4, 8).double())
    assert not dense_cpu.usable(torch.randn(4, 8).half())


@pytest.mark.parametrize("cpu_kernel", [True, False])
def test_noquant_packs_when_the_knob_is_on(cpu_kernel: bool) -> None:
    """quant=none packs (one copy, no [N, K] weight left) and runs the kernel when cpu_kernel is
    on; off, it keeps ``weight`` and F.linear itself."""
    layer = torch.nn.Module()
    q = NoQuant(cpu_kernel=cpu_kernel)
    q.create_weights(layer, 576, 100, torch.float32)
    w = torch.randn(100, 576)
    layer.weight.data.copy_(w)
    q.process_weights_after_loading(layer)
    x, b = torch.randn(3, 576), torch.randn(100)
    if cpu_kernel:
        assert "weight" not in layer._parameters
        assert torch.equal(q.apply(layer, x, b), dense_cpu.kernel(x, w, b))
    else:
        assert "weight_packed" not in layer._parameters
        assert torch.equal(q.apply(layer, x, b), F.linear(x, w, b))

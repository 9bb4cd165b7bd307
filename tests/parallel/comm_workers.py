"""Rank bodies for tests/parallel/test_comm.py (module-level, so spawned processes import them).

Every rank can rebuild every rank's input from a seed, so each rank checks its own result
against a reference computed locally: for sums, the rank-ordered ``((x0 + x1) + x2) + ...``
that ShmComm promises, compared bit for bit (int32 views, so even -0.0 vs 0.0 would show).
Matching that on every rank means all ranks hold bit-identical sums.
"""

from __future__ import annotations

import glob
import random
import warnings

import torch
import torch.distributed as dist

from infer.parallel.comm import CommError, ShmComm, SingleComm, TorchDistComm, make_comm

Group = dist.ProcessGroup | None
SIZES = (1, 576, 100_000)
SMALL_CAP = 64 << 10  # 100k fp32 = 400 KB crosses 7 steps of 64 KiB: both parities, twice over


def inputs(n: int, world: int, seed: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Rank r's input for a given seed, identical on every rank."""
    out = []
    for r in range(world):
        g = torch.Generator().manual_seed(seed * 1000 + r)
        out.append(torch.randn(n, generator=g, dtype=torch.float64).to(dtype))
    return out


def dyadic(n: int, world: int, seed: int) -> list[torch.Tensor]:
    """Small integers / 8: every partial sum is exact in fp32, so any summation order agrees."""
    out = []
    for r in range(world):
        g = torch.Generator().manual_seed(seed * 1000 + r)
        out.append(torch.randint(-1024, 1024, (n,), generator=g).float() / 8)
    return out


def ordered_sum(xs: list[torch.Tensor]) -> torch.Tensor:
    acc = xs[0] + xs[1]
    for x in xs[2:]:
        acc += x
    return acc


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        iv = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return torch.equal(a.contiguous().view(iv), b.contiguous().view(iv))
    return torch.equal(a, b)


def check_collectives(rank: int, world: int, prefix: str, group: Group) -> None:
    """ShmComm against the local references and against gloo, sizes 1 / 576 / 100k."""
    shm = ShmComm(group, capacity_bytes=SMALL_CAP, prefix=prefix)
    gloo = TorchDistComm(group)
    dist.barrier(group)  # rank 0 has unlinked the name once every rank is past setup
    assert not glob.glob(f"/dev/shm/{prefix}*"), "segment name not unlinked after setup"
    for n in SIZES:
        # the other dtypes take the torch path (the fp32 one is C); one size is enough there
        dtypes = (torch.float32, torch.float64, torch.bfloat16) if n == 576 else (torch.float32,)
        for dtype in dtypes:
            xs = inputs(n, world, n, dtype)
            got = shm.all_reduce_sum(xs[rank].clone())
            assert same_bits(got, ordered_sum(xs)), (n, dtype)
            ref = gloo.all_reduce_sum(xs[rank].clone())
            if world == 2:  # a + b == b + a bit for bit, whatever order gloo adds in
                assert same_bits(got, ref), (n, dtype, (got - ref).abs().max())
            else:
                # gloo's ring associates per chunk: each sum is within (3 - 1) * u * sum |x_r|
                # = eps * sum |x_r| of the exact one, so they differ by at most twice that;
                # data with exact sums is compared bit for bit below
                bound = 2 * torch.finfo(dtype).eps * sum(x.double().abs() for x in xs)
                assert bool(((got.double() - ref.double()).abs() <= bound).all()), (n, dtype)
        ex = dyadic(n, world, n)
        got, ref = shm.all_reduce_sum(ex[rank].clone()), gloo.all_reduce_sum(ex[rank].clone())
        assert same_bits(got, ref) and same_bits(got, ordered_sum(ex))
        # every rank holds the same bits: compare through gloo's gather
        rows = gloo.all_gather(shm.all_reduce_sum(inputs(n, world, 7 + n)[rank]).view(1, -1))
        assert all(same_bits(rows[0], rows[r]) for r in range(world))

        for src in range(world):
            for dtype in (torch.float32, torch.int64):
                xs = inputs(n, world, 3 * n + src, torch.float64)
                xs = [(x * 1000).to(dtype) for x in xs]
                assert same_bits(shm.broadcast(xs[rank].clone(), src=src), xs[src])
        xs = inputs(n, world, 5 * n)
        mat = [x.view(1, -1).expand(3, -1) * torch.tensor([[1.0], [2.0], [3.0]]) for x in xs]
        ag = shm.all_gather(mat[rank])
        assert ag.shape == (3 * world, n) and same_bits(ag, torch.cat(mat))
        assert same_bits(ag, gloo.all_gather(mat[rank]))
        for dst in range(world):
            g = shm.gather(mat[rank], dst=dst)
            assert (g is None) == (rank != dst)
            if g is not None:
                assert same_bits(g, torch.cat(mat))
        shm.barrier()

    # non-contiguous input, reduced in place
    xs = [x.view(24, 24) for x in inputs(576, world, 11)]
    t = xs[rank].clone().t()
    out = shm.all_reduce_sum(t)
    assert out is t and same_bits(t, ordered_sum([x.t() for x in xs]))
    shm.close()
    try:
        shm.barrier()
        raise AssertionError("a closed communicator must refuse collectives")
    except CommError:
        pass


def check_races(rank: int, world: int, prefix: str, iters: int, group: Group) -> None:
    """Mixed collectives back to back, with random stalls on each rank, checked every time:
    a rank that read a buffer of the wrong step or parity would see a wrong value."""
    shm = ShmComm(group, capacity_bytes=SMALL_CAP, prefix=prefix)
    base = inputs(576, world, 99)
    big = inputs(20_000, world, 98)  # 80 KB: two steps per all-reduce
    stall = random.Random(rank)
    for it in range(iters):
        if stall.random() < 0.03:
            torch.randn(20_000).sum()  # a few tens of microseconds of other work
        op = it % 5
        if op == 0:
            xs = [b + it for b in base]
            assert same_bits(shm.all_reduce_sum(xs[rank].clone()), ordered_sum(xs)), it
        elif op == 1:
            src = (it // 5) % world
            x = torch.full((8,), it * 10 + rank, dtype=torch.int64)
            assert torch.equal(shm.broadcast(x, src=src), torch.full((8,), it * 10 + src)), it
        elif op == 2:
            x = torch.full((2, 3), float(it * 10 + rank))
            want = torch.cat([torch.full((2, 3), float(it * 10 + r)) for r in range(world)])
            assert torch.equal(shm.all_gather(x), want), it
        elif op == 3:
            xs = [b - it for b in big]
            assert same_bits(shm.all_reduce_sum(xs[rank].clone()), ordered_sum(xs)), it
        else:
            shm.barrier()
    shm.close()


def check_errors_and_choice(rank: int, world: int, prefix: str, group: Group) -> None:
    """Mismatched collectives and dead peers raise CommError; make_comm picks as documented;
    an unclosed communicator leaves no file behind either (checked by the caller)."""
    shm = ShmComm(group, prefix=prefix)
    try:  # rank 0 all-reduces while the others broadcast: every rank must notice
        x = torch.zeros(576)
        shm.all_reduce_sum(x) if rank == 0 else shm.broadcast(x)
        raise AssertionError("mismatched collectives went unnoticed")
    except CommError as e:
        assert "different collective" in str(e)
    shm = ShmComm(group, prefix=prefix, timeout_s=0.3)
    if rank == 0:  # the others never arrive
        try:
            shm.barrier()
            raise AssertionError("a missing peer went unnoticed")
        except CommError as e:
            assert "did not arrive" in str(e)
    dist.barrier(group)

    assert isinstance(make_comm("auto", group, device="cpu", prefix=prefix), ShmComm)
    assert isinstance(make_comm("shm", group, prefix=prefix), ShmComm)
    assert isinstance(make_comm("gloo", group), TorchDistComm)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        fallback = make_comm("auto", group, device="cpu", shm_dir="/nonexistent-shm-dir")
    assert isinstance(fallback, TorchDistComm) and any("gloo" in str(m.message) for m in w)
    for kind, field in (("nccl", "backend"), ("mpi", "allowed values")):
        try:
            make_comm(kind, group)
            raise AssertionError(f"make_comm({kind!r}) should have failed")
        except ValueError as e:
            assert "parallel.comm" in str(e) and field in str(e), str(e)
    # left open on purpose: process exit must not leave the segment behind
    ShmComm(group, prefix=prefix + "-unclosed")


def run_all(rank: int, world: int, prefix: str, iters: tuple[int, int]) -> None:
    """Every check, first on the two-rank group of global ranks 1 and 2 (group rank != global
    rank, as for a tensor-parallel group inside a larger job) while rank 0 waits, then on all
    three ranks. One set of processes: spawning them dominates the cost."""
    assert world == 3
    pair = dist.new_group([1, 2])
    one = dist.new_group([0])
    if rank in (1, 2):
        _checks(rank - 1, 2, f"{prefix}-pair", iters[0], pair)
    else:  # a one-rank group: collectives are the identity
        assert isinstance(make_comm("auto", one), SingleComm)
    dist.barrier()
    _checks(rank, 3, f"{prefix}-world", iters[1], None)


def _checks(rank: int, world: int, prefix: str, iters: int, group: Group) -> None:
    assert dist.get_rank(group) == rank and dist.get_world_size(group) == world
    check_collectives(rank, world, prefix, group)
    check_races(rank, world, prefix + "-race", iters, group)
    check_errors_and_choice(rank, world, prefix + "-err", group)

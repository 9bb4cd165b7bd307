"""ParallelModelRunner: one rank's share of a step's forward (tensor and pipeline parallel).

Every rank runs the same engine loop on the same batch (SPMD). Within a step the batch is cut
into micro-batches (whole sequences, balanced by fed tokens); pipeline stage s works on
micro-batch i while stage s + 1 works on micro-batch i - 1, so the stages overlap. Hidden
states ([2, T, hidden]: x and the residual) go to the next stage as soon as a micro-batch is
done. The last stage computes the logits of the sampled rows once per step (vocab-parallel,
gathered on its tensor rank 0), which broadcasts them to every rank: all ranks then verify
and sample on identical logits, and ``agree`` makes the accepted tokens the output rank's.
"""

from __future__ import annotations

import torch

from infer.parallel.state import ParallelState
from infer.runner import KVSpec, ModelRunner
from infer.scheduler import ScheduledSeq


def micro_batches(fed: list[int], parts: int) -> list[tuple[int, int]]:
    """Cut sequences with ``fed`` tokens each into at most ``parts`` contiguous groups
    [i0, i1) of about equal token counts (never an empty group)."""
    total = sum(fed)
    if parts <= 1 or len(fed) <= 1 or total == 0:
        return [(0, len(fed))] if fed else []
    groups: list[tuple[int, int]] = []
    start, acc = 0, 0
    for i, n in enumerate(fed):
        acc += n
        left_groups = parts - len(groups) - 1
        if left_groups > 0 and acc * parts >= total * (len(groups) + 1) and len(fed) - (i + 1) >= left_groups:
            groups.append((start, i + 1))
            start = i + 1
    if start < len(fed):
        groups.append((start, len(fed)))
    return groups


class ParallelModelRunner(ModelRunner):
    """ModelRunner for one rank of a ``tp_size x pp_size`` grid; its KV memory holds only
    this stage's layers and this rank's KV heads (``kv``)."""

    def __init__(self, model, backend, kv: KVSpec, device: torch.device,  # type: ignore[no-untyped-def]
                 state: ParallelState, num_micro_batches: int | None = None) -> None:
        super().__init__(model, backend, kv, device, layers=list(model.layer_range))
        self.state = state
        self.num_micro_batches = num_micro_batches or state.pp_size
        self.hidden_size = model.args.hidden_size
        self.vocab_size = model.args.vocab_size
        self.dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype

    @torch.inference_mode()
    def execute(
        self, batch: list[ScheduledSeq], block_tables: list[list[int]], logit_rows: list[int]
    ) -> torch.Tensor:
        """Same contract as ``ModelRunner.execute``; every rank returns the same logits."""
        st, m = self.state, self.model
        parts = self.num_micro_batches if st.pp_size > 1 else 1
        groups = micro_batches([b.num_fed for b in batch], parts)
        rows = sorted(logit_rows)
        if rows != list(logit_rows):
            raise ValueError("logit rows must be in packed order")
        sends = []
        xs, rs = [], []
        tok0 = 0
        for i0, i1 in groups:
            ids, positions, ctx = self.prepare(batch[i0:i1], block_tables[i0:i1])
            t = ids.shape[0]
            if st.is_first_stage:
                x, res = m.embed(ids), None
            else:
                buf = torch.empty((2, t, self.hidden_size), dtype=self.dtype, device=self.device)
                st.recv(buf, st.pp_rank - 1)
                x, res = buf[0], buf[1]
            x, res = m.run_layers(x, res, positions, ctx)
            if not st.is_last_stage:
                sends.append(st.send(torch.stack([x, res]), st.pp_rank + 1))
            else:
                local = [r - tok0 for r in rows if tok0 <= r < tok0 + t]
                if local:
                    sel = torch.tensor(local, dtype=torch.long, device=self.device)
                    xs.append(x.index_select(0, sel))
                    rs.append(res.index_select(0, sel))
            tok0 += t
        for w in sends:
            w.wait()
        logits = None
        if st.is_last_stage and rows:
            logits = m.compute_logits(m.final_norm(torch.cat(xs), torch.cat(rs)))
        return self._share(logits, len(rows))

    def _share(self, logits: torch.Tensor | None, n: int) -> torch.Tensor:
        """Broadcast the output rank's logits [n, vocab] to every rank."""
        st = self.state
        if n == 0:
            return torch.empty((0, self.vocab_size), dtype=torch.float32, device=self.device)
        if st.rank != st.output_rank or logits is None:
            logits = torch.empty((n, self.vocab_size), dtype=torch.float32, device=self.device)
        return st.world_comm.broadcast(logits.contiguous(), st.output_rank)

    def agree(self, accepted: dict[int, list[int] | Exception]) -> dict[int, list[int] | Exception]:
        """Make every rank's accepted tokens the output rank's (per sequence id; a failed
        verification there fails the sequence everywhere)."""
        st = self.state
        keys = sorted(accepted)
        if not keys:
            return accepted
        lens = torch.tensor([-1 if isinstance(accepted[k], Exception) else len(accepted[k])  # type: ignore[arg-type]
                             for k in keys], dtype=torch.int64)
        st.world_comm.broadcast(lens, st.output_rank)
        flat = [t for k in keys if not isinstance(accepted[k], Exception) for t in accepted[k]]  # type: ignore[union-attr]
        toks = torch.tensor(flat, dtype=torch.int64) if st.rank == st.output_rank else \
            torch.empty(int(lens.clamp(min=0).sum()), dtype=torch.int64)
        if toks.numel():
            st.world_comm.broadcast(toks, st.output_rank)
        out: dict[int, list[int] | Exception] = {}
        at = 0
        for k, n in zip(keys, lens.tolist()):
            if n < 0:
                mine = accepted[k]
                out[k] = mine if isinstance(mine, Exception) else RuntimeError(
                    "verification failed on the output rank")
                continue
            out[k] = toks[at : at + n].tolist()
            at += n
        return out

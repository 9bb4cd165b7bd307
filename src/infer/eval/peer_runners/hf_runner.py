"""Peer runner: HF transformers ``generate`` (static batches, left padding); see peer_io.py.

Run by any python with torch + transformers (by default infer's own interpreter, as a
separate process so its memory and threads stay apart). Offline requests go in batches of
``options.batch_size`` in workload order; each batch decodes as many tokens as its longest
request asks for, and only the tokens each request asked for are returned.
"""

from __future__ import annotations

import time
from typing import Any

from peer_io import read_job, serve


def main() -> None:
    job, out_path = read_job()
    opts: dict[str, Any] = dict(job.get("options") or {})
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(int(job["threads"]))
    batch = int(opts.get("batch_size") or 16)
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=getattr(torch, job["dtype"]))
    model.eval()
    startup = time.perf_counter() - t
    pad = int(opts.get("pad_id") or 0)

    @torch.inference_mode()
    def generate(reqs: list[tuple[list[int], int]]) -> list[list[int]]:
        outs: list[list[int]] = []
        for i in range(0, len(reqs), batch):
            chunk = reqs[i : i + batch]
            width, new = max(len(p) for p, _ in chunk), max(n for _, n in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, (p, _) in enumerate(chunk):
                ids[j, width - len(p) :] = torch.tensor(p)
                mask[j, width - len(p) :] = 1
            gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                 max_new_tokens=new, min_new_tokens=new, pad_token_id=pad,
                                 temperature=None, top_p=None, top_k=None)
            outs.extend(gen[j, width : width + n].tolist() for j, (_, n) in enumerate(chunk))
        return outs

    settings = {"batch_size": batch, "torch_threads": torch.get_num_threads(), "pad_id": pad}
    serve(job, out_path, generate, startup, transformers.__version__, settings)


if __name__ == "__main__":
    main()

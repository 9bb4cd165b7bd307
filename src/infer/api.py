"""Notebook API shaped like vLLM's offline one: ``LLM(...).generate(prompts, params)``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from infer.build import build
from infer.config_loader import compose_config, group_options
from infer.outputs import RequestOutput
from infer.parallel.executor import start_engine
from infer.sampling_params import SamplingParams

PromptType = str | dict[str, Any]


class LLM:
    """An engine built from the same choices as the config groups.

    Args:
        model: None (embedded default), a model config name (``group_options("model")``),
            or a path / hub id (loaded through ``model=hf``).
        attention, quant, spec, parallel, kernels: config-group option names (None = the
            default in configs/config.yaml).
        tp_size, pp_size, comm: ``parallel.*`` keys. With more than one rank and no launcher
            (no RANK in the environment), this process becomes rank 0 and starts the other
            ranks itself; ``shutdown()``, ``del`` or interpreter exit stops them.
        dtype: model dtype override ("float32" | "bfloat16" | "float16").
        threads: torch intra-op threads (default: cores this process may use).
        overrides: extra Hydra overrides, e.g. ["attention.block_size=32"].
        kv_cache_dtype: KV cache storage, "auto" (model dtype) | "int8" | "fp8" (the
            top-level ``kv_cache_dtype`` key; None = the config's default).
        tokenizer: a tokenizer folder or hub id when the model folder has none
            (``model.tokenizer``).
        skip_tokenizer_init: no tokenizer at all: prompts must be ``{"prompt_token_ids": ...}``
            and outputs carry token ids with empty text.
        **engine_knobs: keys of the ``engine`` config (max_num_seqs, kv_cache_tokens, ...).
    """

    def __init__(
        self,
        model: str | None = None,
        attention: str | None = None,
        quant: str | None = None,
        spec: str | None = None,
        parallel: str | None = None,
        tp_size: int | None = None,
        pp_size: int | None = None,
        comm: str | None = None,
        kernels: str | None = None,
        dtype: str | None = None,
        threads: int | None = None,
        overrides: list[str] | None = None,
        kv_cache_dtype: str | None = None,
        tokenizer: str | None = None,
        skip_tokenizer_init: bool | None = None,
        **engine_knobs: Any,
    ) -> None:
        groups = {"attention": attention, "quant": quant, "spec": spec,
                  "parallel": parallel, "kernels": kernels}
        ov = [f"{g}={v}" for g, v in groups.items() if v is not None]
        values: dict[str, Any] = {f"engine.{k}": v for k, v in engine_knobs.items()}
        if model is not None:
            if model in group_options("model"):
                ov.append(f"model={model}")
            else:
                ov.append("model=hf")
                values["model.path"] = model
        if dtype is not None:
            values["model.dtype"] = dtype
        if threads is not None:
            values["threads"] = threads
        if kv_cache_dtype is not None:
            values["kv_cache_dtype"] = kv_cache_dtype
        if tokenizer is not None:
            values["model.tokenizer"] = tokenizer
        if skip_tokenizer_init is not None:
            values["skip_tokenizer_init"] = bool(skip_tokenizer_init)
        for key, val in (("tp_size", tp_size), ("pp_size", pp_size), ("comm", comm)):
            if val is not None:
                values[f"parallel.{key}"] = val
        self.config = compose_config(ov + list(overrides or []), values)
        # several ranks: rank 0's DriverEngine (the same interface) and the workers' owner
        self.engine, self._executor = start_engine(self.config, build)
        # outputs of requests that finished during a step another consumer (a generate call,
        # another stream) ran: kept here until their own consumer collects them
        self._mailbox: dict[str, RequestOutput] = {}
        self._live: set[str] = set()  # requests of generate/stream calls not yet collected
        self.model_path: Path = self.engine.model_path  # type: ignore[assignment]

    def shutdown(self) -> None:
        """Stop the worker processes of a multi-process LLM (no-op otherwise; idempotent)."""
        if self._executor is not None:
            self._executor.shutdown()

    def get_tokenizer(self) -> Any:
        return self.engine.tokenizer

    def _to_ids(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        """Text prompts are encoded with the tokenizer's own default for special tokens
        (a BOS where the model family expects one), as vLLM and HF do."""
        if isinstance(prompt, str):
            tok = self.engine.tokenizer
            if tok is None:
                raise ValueError(
                    "a text prompt needs a tokenizer; this LLM was built with "
                    "skip_tokenizer_init=True: pass {'prompt_token_ids': [...]} instead"
                )
            return prompt, list(tok.encode(prompt))
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            ids = prompt["prompt_token_ids"]
            if not isinstance(ids, (list, tuple)):
                raise TypeError(f"prompt_token_ids must be a list of ints; got {type(ids).__name__}")
            return prompt.get("prompt"), [int(t) for t in ids]
        if isinstance(prompt, dict) and "prompt" in prompt:
            return self._to_ids(prompt["prompt"])
        raise TypeError(
            f"a prompt must be a str or a dict with 'prompt_token_ids' or 'prompt'; got {type(prompt).__name__}"
        )

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a chat (with the generation prompt appended)."""
        out = self.engine.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True
        )
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Run all prompts to completion as one continuous batch; outputs in input order.

        Every request is validated before any runs: a bad one raises ValueError naming its
        index, and the engine stays usable.
        """
        plist = [prompts] if isinstance(prompts, (str, dict)) else list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        params = (
            [sampling_params] * len(plist)
            if isinstance(sampling_params, SamplingParams)
            else list(sampling_params)
        )
        if len(params) != len(plist):
            raise ValueError(f"got {len(params)} SamplingParams for {len(plist)} prompts")
        reqs = []
        for i, (p, sp) in enumerate(zip(plist, params)):
            try:
                text, ids = self._to_ids(p)
                self.engine.validate_params(sp)
                self.engine.validate_prompt(ids)
            except (ValueError, TypeError) as e:
                raise type(e)(f"request {i}: {e}") from e
            reqs.append((text, ids, sp))
        rids: list[str] = []
        results: dict[str, RequestOutput] = {}
        bar = _progress(len(reqs), use_tqdm)
        try:
            for t, ids, sp in reqs:
                rids.append(self.engine.add_request(t, ids, sp))
                self._live.add(rids[-1])
            while True:
                for r in rids:
                    if r not in results and r in self._mailbox:
                        results[r] = self._mailbox.pop(r)
                        if bar is not None:
                            bar.update(1)
                if len(results) == len(rids):
                    break
                self._step()
        finally:
            # an exception (or KeyboardInterrupt) midway: leave nothing of ours behind
            for r in rids:
                self._live.discard(r)
                self._mailbox.pop(r, None)
                if r not in results:
                    self.engine.abort(r)
            if bar is not None:
                bar.close()
        return [results[r] for r in rids]

    def stream(self, prompt: PromptType, sampling_params: SamplingParams | None = None) -> Iterator[RequestOutput]:
        """Yield the request's output after every step that advanced it (one request).
        Closing the iterator early (or an exception) aborts the request and frees its KV."""
        text, ids = self._to_ids(prompt)
        sp = sampling_params or SamplingParams()
        rid = self.engine.add_request(text, ids, sp)
        self._live.add(rid)
        done = False
        try:
            while not done:
                for o in self._step(rid):
                    if o.request_id != rid:
                        continue
                    done = o.finished
                    yield o
        finally:
            self._live.discard(rid)
            self._mailbox.pop(rid, None)
            if not done:
                self.engine.abort(rid)

    def _step(self, rid: str | None = None) -> list[RequestOutput]:
        """One engine step, or, if ``rid`` already finished in a step run by another consumer,
        its final output from the mailbox. Finished outputs of other requests are posted to
        the mailbox so that interleaved streams and generate calls each get their own."""
        if rid is not None and rid in self._mailbox:
            return [self._mailbox.pop(rid)]
        outs = self.engine.step()
        for o in outs:
            if o.finished and o.request_id != rid and o.request_id in self._live:
                self._mailbox[o.request_id] = o
        return outs


def _progress(total: int, enabled: bool) -> Any:
    if not enabled or total < 2:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="requests", unit="req", dynamic_ncols=True)

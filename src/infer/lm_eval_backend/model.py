"""lm-evaluation-harness model ``infer``: any combination of config choices as an lm-eval LM.

    infer-lm-eval --model infer --model_args attention=radix,quant=int8 --tasks hellaswag

Token handling follows the harness's own HF backend (same pair encoding, prefix token,
rolling windows, stop-sequence post-processing), so metrics differ only by the engine's
numerics. Loglikelihoods come from the engine's prompt logprobs (``prompt_logprobs=0``: the
actual token's logprob and rank); every request of a call is queued at once and continuous
batching decides the batches.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from infer.lm_eval_backend.runner import EngineRunner

_GROUPS = ("attention", "quant", "spec", "parallel", "kernels")
_IGNORED = ("batch_size", "max_batch_size", "device")  # the harness passes these; batching is ours


@register_model("infer")
class InferLM(TemplateLM):
    """An lm-eval LM over an infer engine.

    Args (all optional; ``--model_args k=v,...``):
        engine: an already built Engine (``task=lm_eval`` passes its own).
        pretrained / model: model config name (``smollm2``, ``tiny``) or an HF folder / GGUF.
        attention, quant, spec, parallel, kernels: config-group option names.
        dtype, threads, kv_cache_dtype: as in ``infer.LLM``.
        max_length: context used for windows and truncation (default: max_model_len - 2, so a
            full window plus its predicted token fits a request).
        max_gen_toks: default generation budget (256, as the harness's HF backend).
        add_bos_token: force (True) or forbid (False) the tokenizer's special tokens.
        prefix_token_id: the token scoring starts from for empty contexts (default: BOS, else EOS).
        Any other ``key=value``: a dotted key is a Hydra override (``attention.block_size=32``),
        a plain key an engine knob (``max_num_seqs=64``, ``kv_cache_tokens=65536``).
    """

    def __init__(self, engine: Any = None, pretrained: str | None = None, model: str | None = None,
                 dtype: str | None = None, threads: int | None = None, kv_cache_dtype: str | None = None,
                 max_length: int | None = None, max_gen_toks: int = 256, add_bos_token: bool | None = None,
                 prefix_token_id: int | None = None, **kwargs: Any) -> None:
        super().__init__()
        for k in _IGNORED:
            kwargs.pop(k, None)
        if engine is None:
            from infer.api import LLM

            groups = {g: kwargs.pop(g) for g in _GROUPS if g in kwargs}
            overrides = [f"{k}={v}" for k, v in kwargs.items() if "." in k]
            knobs = {k: v for k, v in kwargs.items() if "." not in k}
            engine = LLM(model=pretrained or model, dtype=dtype, threads=threads, kv_cache_dtype=kv_cache_dtype,
                         overrides=overrides, **groups, **knobs).engine
        elif kwargs:
            raise ValueError(f"with an engine given, model_args {sorted(kwargs)} cannot apply")
        if engine.tokenizer is None:
            raise ValueError("the lm-eval backend needs the model's tokenizer")
        self.engine = engine
        self.runner = EngineRunner(engine)
        self.tokenizer = engine.tokenizer
        self._max_length = int(max_length) if max_length else engine.max_model_len - 2
        if self._max_length + 1 >= engine.max_model_len:
            raise ValueError(f"max_length={self._max_length} must be < max_model_len - 1 "
                             f"({engine.max_model_len - 1})")
        self._max_gen_toks = int(max_gen_toks)
        self.add_bos_token = add_bos_token
        self._prefix = prefix_token_id

    # ---- tokenization (as the harness's HF backend does it) --------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        if self._prefix is not None:
            return self._prefix
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "infer")).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                   left_truncate_len: int | None = None, **kwargs: Any) -> list[int]:
        if add_special_tokens is None:
            add_special_tokens = self.add_bos_token
            # a string that already starts with the prefix token's text gets no second one
            if string.startswith(self.tokenizer.decode(self.prefix_token_id)):
                add_special_tokens = False
        kw = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        ids = self.tokenizer.encode(string, **kw)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    # ---- the three request types -----------------------------------------------------------
    def _loglikelihood_tokens(self, requests: list[tuple[Any, list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """(sum of continuation logprobs, whether every continuation token was the argmax).
        The sequence is left-truncated to ``max_length + 1`` tokens, as the HF backend does."""
        seqs = []
        for _, ctx, cont in requests:
            if not ctx or not cont:
                raise ValueError("loglikelihood needs a non-empty context and continuation")
            seqs.append(((ctx + cont)[-(self.max_length + 1):], len(cont)))
        scores = self.runner.score([s for s, _ in seqs], [n for _, n in seqs], not disable_tqdm)
        for (key, _, _), ans in zip(requests, scores):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, ans)
        return scores

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Whole-document loglikelihood over disjoint windows of ``max_length`` tokens."""
        windows: list[tuple[None, list[int], list[int]]] = []
        counts = []
        for (string,) in [r.args for r in requests]:
            ws = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            windows += [(None, ctx, cont) for ctx, cont in ws]
            counts.append(len(ws))
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        out, i = [], 0
        for req, n in zip(requests, counts):
            total = sum(s for s, _ in scores[i:i + n])
            i += n
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
            out.append(total)
        return out

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Generate until a stop sequence (the task's ``until`` plus EOS) or ``max_gen_toks``."""
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        jobs = []
        for context, gen_kwargs in [r.args for r in requests]:
            kw = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            until = handle_stop_sequences(kw.pop("until", None), eos=eos)
            max_gen = int(kw.pop("max_gen_toks"))
            if max_gen >= self.max_length:
                raise ValueError(f"max_gen_toks={max_gen} must be < max_length={self.max_length}")
            ids = self.tok_encode(context, left_truncate_len=self.max_length - max_gen)
            temp = float(kw.get("temperature", 0.0)) if kw.get("do_sample") else 0.0
            jobs.append((ids, until, max_gen, temp, kw))
        texts = self.runner.generate(jobs, not disable_tqdm)
        res = []
        for req, text, (_, until, *_rest) in zip(requests, texts, jobs):
            s = postprocess_generated_text(generation=text, stop=until, think_end_token=None)
            self.cache_hook.add_partial("generate_until", req.args, s)
            res.append(s)
        return res

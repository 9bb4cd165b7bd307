"""infer: a research-oriented, modular transformer inference framework.

    from infer import LLM, SamplingParams
    llm = LLM()                      # embedded SmolLM2-135M-Instruct
    out = llm.generate(["The capital of France is"], SamplingParams(temperature=0, max_tokens=8))
"""

import os as _os

import torch as _torch

# Without CUDA, Triton kernels can only run under the interpreter, and the switch must be set
# before anything (transformers does, via torch) imports triton. Set it as early as possible.
if not _torch.cuda.is_available():
    _os.environ.setdefault("TRITON_INTERPRET", "1")

from infer.api import LLM  # noqa: E402
from infer.build import build  # noqa: E402
from infer.config_loader import compose_config  # noqa: E402
from infer.outputs import CompletionOutput, RequestOutput  # noqa: E402
from infer.sampling_params import SamplingParams  # noqa: E402

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "build", "compose_config"]

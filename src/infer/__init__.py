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

from infer.api import LLM
from infer.build import build
from infer.config_loader import compose_config
from infer.outputs import CompletionOutput, RequestOutput
from infer.sampling_params import SamplingParams

__all__ = ["LLM", "CompletionOutput", "RequestOutput", "SamplingParams", "build", "compose_config"]

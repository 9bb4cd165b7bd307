"""infer: a research-oriented, modular transformer inference framework.

    from infer import LLM, SamplingParams
    llm = LLM()                      # embedded SmolLM2-135M-Instruct
    out = llm.generate(["The capital of France is"], SamplingParams(temperature=0, max_tokens=8))
"""

from infer.api import LLM
from infer.build import build
from infer.config_loader import compose_config
from infer.outputs import CompletionOutput, RequestOutput
from infer.sampling_params import SamplingParams

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "build", "compose_config"]

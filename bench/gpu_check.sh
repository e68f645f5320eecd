#!/usr/bin/env bash
# GPU check (issue #18): model-only vs featurize end to end on the accelerator, in under 8 minutes.
#   bash bench/gpu_check.sh [--cpu-smoke] [gpu_check.py flags...]
# Prints the card, then bench/gpu_check.py's table; JSON + Markdown go to $OUT (else bench/results/).
# The Python run is capped at 470 s (SIGTERM, then SIGKILL 10 s later), so a hang cannot pass 8 minutes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-$(command -v python || command -v python3 || true)}"
[[ -n "$PYTHON" ]] || { echo "gpu_check.sh: no python or python3 on PATH (set PYTHON=...)" >&2; exit 2; }
export PYTHONUNBUFFERED=1
# Kernels JIT-compiled from PTX (a framework built without this card's SASS) are cached per user;
# the default 256 MiB cache can be too small to keep them for the next process.
export CUDA_CACHE_MAXSIZE="${CUDA_CACHE_MAXSIZE:-4294967296}"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi || echo "nvidia-smi failed (exit $?)"
else
  echo "nvidia-smi: not found"
fi
exec timeout -k 10 470 "$PYTHON" bench/gpu_check.py "$@"

#!/usr/bin/env bash
# The GPU check on the GPU machine, whose image has JAX but neither Beam nor Keras, and no package index:
#   python tools/gpu_wheelhouse.py              # here, with the index: .wheelhouse/ (~39 MiB)
#   bash bench/gpu_run.sh [gpu_check.py flags]  # there, with .wheelhouse carried beside the checkout
# Installs the wheelhouse's wheels (featurize's own among them) into the image's Python with --no-index
# --no-deps, so nothing the image has (numpy, pyarrow, grpcio, protobuf, Pillow, h5py, JAX) is replaced, then
# runs bench/gpu_check.sh on Keras's JAX backend (the image has no TensorFlow).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-$(command -v python3 || command -v python || true)}"
WHEELHOUSE="${WHEELHOUSE:-.wheelhouse}"
[[ -n "$PYTHON" ]] || { echo "gpu_run.sh: no python3 or python on PATH (set PYTHON=...)" >&2; exit 2; }
compgen -G "$WHEELHOUSE/featurize-*.whl" >/dev/null || {
  echo "gpu_run.sh: no featurize wheel in $WHEELHOUSE: build it first with python tools/gpu_wheelhouse.py" >&2; exit 2; }
"$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --find-links "$WHEELHOUSE" "$WHEELHOUSE"/*.whl
export KERAS_BACKEND=jax PYTHON
exec bash bench/gpu_check.sh --keras-backend jax "$@"

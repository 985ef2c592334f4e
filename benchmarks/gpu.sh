#!/usr/bin/env bash
# The 1B-shaped GRPO step and rollout (bf16) on one GPU, against the card's limits:
# MFU of the update against the card's bf16 peak (measured and nominal), and one decode
# step's bytes against its memory bandwidth (measured and nominal). About 5 minutes on one
# H100 (a random 1B checkpoint is written first, ~30 s). Writes gpu.json into $OUT (or
# the folder given), prints it too.
#
#   bash benchmarks/gpu.sh [OUT_DIR] [extra benchmarks/gpu.py flags, e.g. --peak_tflops 989]
#
# Needs jax with CUDA, flax, optax, absl, numpy, torch and transformers (for the random
# checkpoint): the device machines' image has them all. Run from the repository root; the
# package is used from the tree (PYTHONPATH), nothing is installed.
set -euo pipefail
out="${1:-${OUT:-.}}"
shift || true
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9  # one process at a time holds the card
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c 'import jax; print("jax", jax.__version__, jax.devices())'
timeout 470 python3 benchmarks/gpu.py --out "$out/gpu.json" "$@"

#!/usr/bin/env bash
# Downloads the wheels `python scripts/benchmark.py --suite gpu` needs on a GPU image without network.
#
# That image (Python 3.12, x86-64) already has jax/jaxlib 0.11 with CUDA 13, flax, optax,
# orbax-checkpoint, numpy, pillow, tqdm, filelock, torch and torchvision. Missing there:
#   jaxopt  - the "lbfgs" optimizer (imported by nst_jax.gatys); pure Python, its own
#             dependencies (jax, jaxlib, numpy, scipy) are on the image.
# Not needed by the suite: grain and tensorflow-datasets (only the training data pipeline imports them).
#
# Usage, from the repository root:   bash scripts/gpu_wheels.sh [DIR]     (default DIR: .whl)
# then on the GPU machine, before the suite:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site DIR/*.whl && export PYTHONPATH=.:/tmp/site
#   python3 scripts/benchmark.py --suite gpu
set -euo pipefail
dir="${1:-.whl}"
mkdir -p "$dir"
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    -d "$dir" "jaxopt==0.8.5"

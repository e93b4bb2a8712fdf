#!/usr/bin/env bash
# GPU benchmark on a machine that has torch + CUDA but no internet and no nnunetv2 (the lent device).
# Prepare on a machine with package access (see ../../../shared/tools/gpu-anchor/README.md for the
# wheel list; add our own dependencies below), then carry `.gpu/` and run this from the repo root:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .gpu/whl nnunetv2==2.8.1 dynamic-network-architectures batchgenerators batchgeneratorsv2 blosc2 \
#     ndindex numexpr connected-components-3d nibabel yacs graphviz pydantic pydantic-core typing-inspection \
#     annotated-types fsspec pyyaml simpleitk
#   pip wheel --no-deps acvl-utils -w .gpu/whl
#   bash benchmarks/gpu/run.sh "$OUT"
#
# Measures, in one run on one card: our path and nnU-Net's predict_from_files with an
# MRSegmentator-sized network (5 folds) on NAKO-sized input: seconds per scan, scans/hour, GPU busy.
set -euo pipefail
OUT=${1:-/tmp/gpu-bench}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
python3 benchmarks/inference_bench.py --input nako --model mrseg-sized --folds 5 --scans 3 --device cuda \
  --workers 3 --out "$OUT/gpu-nako-mrseg-sized.json" 2>&1 | tee "$OUT/log.txt"

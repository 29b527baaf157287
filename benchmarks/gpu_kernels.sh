#!/usr/bin/env bash
# The kernel checks that need an NVIDIA GPU, as one script for a lent GPU machine (torch with CUDA,
# cuda-python and nvcc installed; nothing is downloaded):
#   bash benchmarks/gpu_kernels.sh            # logs and tables into $OUT (default /tmp/vlm-edge-gpu)
# 1. tests/test_kernel_gpu.py: the kernel through cuda-python against the numpy reference
# 2. benchmarks/downsample.py: ours vs PyTorch eager vs torch.compile vs a D2D copy, B = 1, 8, 64
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/vlm-edge-gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv | tee "$out/gpu.txt"
nvcc --version | tail -1 | tee -a "$out/gpu.txt"
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
python3 -m pytest -q -s -m gpu tests/test_kernel_gpu.py -p no:cacheprovider 2>&1 | tee "$out/gpu-tests.log"
for args in "--dtype float16" "--dtype bfloat16" "--dtype float32" "--dtype float16 --ratio 3"; do
  python3 benchmarks/downsample.py $args 2>&1 | tee -a "$out/downsample.md"
done

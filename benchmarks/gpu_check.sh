#!/usr/bin/env bash
# The GPU checks, as one script for the device machine (see docs/benchmarks.md, "GPU"):
#   1. install era5latent over the image's torch (wheels carried in .whl/, made by gpu_wheels.sh)
#   2. the CUDA tests (pytest -m gpu)
#   3. bench_train.py's GPU section: paper preset at 721 x 1440, bf16: step time, samples/s,
#      peak memory, MFU; with and without activation checkpointing
#   4. make bench's GPU section (bench_pipeline.py): encode/decode small and paper at 721 x 1440
# Each writes under $OUT (default ./gpu-out). Budget: under 8 minutes on one H200.
# Call:  run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=8
PY=python3
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
  date -u; } 2>&1 | tee "$OUT/machine.txt"
timeout 90 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_model.py 2>&1 | tee "$OUT/cuda_tests.txt"
timeout 200 $PY benchmarks/bench_train.py --device cuda --gpu-only 2>&1 | tee "$OUT/bench_train_gpu.txt"
timeout 200 $PY benchmarks/bench_pipeline.py --device cuda --grid 721x1440 --presets small,paper \
  --quick --gpu off --dir /dev/shm --rounds 2 --long-rounds 2 --max-rounds 3 --budget 20 2>&1 | tee "$OUT/bench_pipeline_gpu.txt"
echo "done: $(date -u)" | tee -a "$OUT/machine.txt"

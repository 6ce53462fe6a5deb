#!/usr/bin/env bash
# Issue 16's GPU check in one prepared run, for a session whose task is lent a GPU:
#   device run, command: bash benchmarks/gpu_check.sh      (timeout_s about 540; no carry needed)
# It uses the device image's own python3 (torch with CUDA, transformers, pytest, safetensors) and
# this checkout on PYTHONPATH, so nothing is installed. Everything it prints also goes to
# $OUT/gpu-check.log, and the 0.5B run's figures to $OUT/gpu_qad_05b.json.
#   1. lowbit bench kernels --device cuda   (every format's ratio to x.clone(); goal >= 0.7)
#   2. the GPU tests (tests/engine/test_cuda.py and the CUDA cases of the sequential and GPTQ tests)
#   3. lowbit bench train --device cuda     (QAT / QAD step ratios against their goals)
#   4. benchmarks/gpu_qad_05b.py             (0.5B-shaped Qwen2, bf16 QAD: plan vs max_memory_allocated)
set -uo pipefail
OUT="${OUT:-/tmp/gpu-check}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY="${PYTHON:-python3}"
{
  $PY -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__, '|', torch.cuda.get_device_name())"
  echo "== 1. lowbit bench kernels --device cuda"
  timeout 120 $PY -m engine.cli bench kernels --device cuda
  echo "== 2. GPU tests"
  timeout 240 $PY -m pytest -q -p no:cacheprovider -rs tests/engine/test_cuda.py \
    tests/engine/test_sequential_calib.py tests/engine/test_sequential_run.py tests/engine/test_gptq.py -k "cuda"
  echo "== 3. lowbit bench train --device cuda"
  timeout 90 $PY -m engine.cli bench train --device cuda
  echo "== 4. 0.5B-shaped Qwen2, bf16 QAD on the GPU"
  timeout 240 $PY benchmarks/gpu_qad_05b.py --out "$OUT"
} 2>&1 | tee "$OUT/gpu-check.log"

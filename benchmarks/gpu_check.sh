#!/bin/sh
# One-shot GPU check: the CUDA suite, train.py's runs on the GPU(s), then one table of timings
# and memory.
#   benchmarks/gpu_check.sh                    # cuda:0 (and torchrun over every visible GPU)
#   benchmarks/gpu_check.sh --device cuda:1
#   benchmarks/gpu_check.sh --device cpu --tiny
# Arguments go to benchmarks/gpu_check.py (see its -h).
cd "$(dirname "$0")/.." && exec "${PYTHON:-python}" benchmarks/gpu_check.py "$@"

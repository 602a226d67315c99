#!/bin/sh
# One-shot GPU check (issue 20): the CUDA suite, then one table of timings and memory.
#   benchmarks/gpu_check.sh                    # cuda:0, at most ~5 minutes
#   benchmarks/gpu_check.sh --device cuda:1
#   benchmarks/gpu_check.sh --device cpu --tiny
# Arguments go to benchmarks/gpu_check.py (see its -h).
cd "$(dirname "$0")/.." && exec "${PYTHON:-python}" benchmarks/gpu_check.py "$@"

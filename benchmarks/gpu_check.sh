#!/usr/bin/env bash
# The prepared GPU check (issue 12): under 8 minutes on one GPU.
#   1. the test suite's CUDA-marked tests (pytest -m cuda; they skip without a GPU);
#   2. benchmarks/gpu_bench.py: matmul rates, SAE training rows/s (d 768, 3,072 and 49,152 latents,
#      k 64, fp32/TF32/bf16) against the step's arithmetic floor, caching images/s of a
#      ViT-B/32-shaped random CLIP at 224 px, and the sparse-vs-dense TopK step.
# Figures go to OUT/figures.{json,md} and the test log to OUT/cuda_tests.txt; copy the Markdown
# into docs/benchmarks.md with the date and hardware.
#
#   benchmarks/gpu_check.sh [--out DIR] [--dry-run]
#
# --dry-run: CPU and tiny sizes, so CI exercises the whole script (the figures are then not figures).
set -euo pipefail
cd "$(dirname "$0")/.."

out="runs/gpu_check-$(date -u +%Y%m%dT%H%M%SZ)"
dry=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --dry-run) dry=(--dry-run --device cpu); shift ;;
    *) echo "usage: $0 [--out DIR] [--dry-run]" >&2; exit 2 ;;
  esac
done
python="${PYTHON:-python}"
mkdir -p "$out"
export SPARSESTEER_QUIET=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if [ ${#dry[@]} -eq 0 ]; then
  "$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu_check.sh: no CUDA GPU here (use --dry-run on CPU)")'
fi

echo "== CUDA-marked tests" | tee "$out/cuda_tests.txt"
set +e
timeout 240 "$python" -m pytest -q -m cuda -p no:cacheprovider tests 2>&1 | tee -a "$out/cuda_tests.txt"
tests_status=${PIPESTATUS[0]}
set -e

echo "== benchmarks/gpu_bench.py"
timeout 300 "$python" benchmarks/gpu_bench.py --out "$out/figures" "${dry[@]}"
echo "figures: $out/figures.md, $out/figures.json; tests: $out/cuda_tests.txt (pytest exit $tests_status)"
exit "$tests_status"

#!/usr/bin/env bash
# Reproduce every table in results/. Finished runs are skipped (records in results/<table>/runs) and interrupted
# ones resume from their epoch checkpoint, so after a crash simply run this script again.
#
# Expected runtimes (2 CPU cores measured where stated, GPU figures are estimates):
#   offline-cpu       528 runs (16 methods, 3-lr grid, BreastMNIST 5 seeds) into results/offline-cpu-grid: ~18 h
#                     on 2 CPU cores (BreastMNIST's 240 measured: 1.4-1.7 h for seeds 0-2, 35 min for seeds 3-4;
#                     PneumoniaMNIST one measured pass of the 16 methods, ~43 min at channels_last, x 9 = ~6.4 h;
#                     ISIC's 144 measured, ~8.7 h on a fast host; see the preset); a few hours on one GPU
#                     (estimate). ISIC weighted-CE rows: 36 runs, 2.3 h measured (summed wall time on AMD EPYC
#                     hosts, 34 of the 36 alone on the cores)
#   medmnist-v2       (28) rows: BreastMNIST ResNet-18 10-16 min/run (measured 589-946 s), ResNet-50 45-48 min/run (3 measured, 2 CPU cores);
#                     PneumoniaMNIST ResNet-18 2 h 5-8 min/run on a fast host (3 measured; 3.2 h on a slow one), ResNet-50 ~7 h/run (estimate, ~9x BreastMNIST);
#                     minutes per run on a GPU
#   medmnist-v2-224   (224) rows, GPU only: ~1-2 h in all on one H100
#   paper             ResNet-50 at 224 px, GPU only (+ network for the weights): ~4-6 GPU-days on one H100
#   performance       6-9 min on 2 CPU cores (two measured runs), a few minutes on a GPU (estimate)
#
# Usage: ./run_all.sh [--gpu-tables] [--dry-run] [--retry-failed] [extra flags passed to every benchmarks.run]
#   --dry-run: every sweep lists its planned runs and their status; the report, published-comparison and
#              performance steps print their command instead of running it. Nothing is written.
set -euo pipefail
cd "$(dirname "$0")"
export PETL_DATA_ROOT="${PETL_DATA_ROOT:-$(cd .. && pwd)/shared/data}"

# Every step runs `python -m ...`: stop with one line, before anything runs, if that python cannot import the project.
if ! python -c 'import torch, petl, benchmarks.run' 2>/dev/null; then
  echo "error: '$(command -v python || echo python)' cannot import petl with its dependencies; activate the project's environment" \
    "(source .venv/bin/activate) or install it there (pip install -e '.[dev]')" >&2
  exit 2
fi

GPU_TABLES=0
DRY_RUN=0
EXTRA=()
for arg in "$@"; do
  case "$arg" in
    --gpu-tables|--paper) GPU_TABLES=1 ;;
    --dry-run) DRY_RUN=1; EXTRA+=("$arg") ;;
    *) EXTRA+=("$arg") ;;
  esac
done
if python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then GPU_TABLES=1; fi

status=0
sweep() { python -m benchmarks.run --no-progress "${EXTRA[@]}" "$@" || status=$?; }
# A step that writes tables or measures: under --dry-run only its command is printed.
step() {
  if [[ "$DRY_RUN" == 1 ]]; then echo "[dry run] would run: $*"; else "$@" || status=$?; fi
}

sweep --preset offline-cpu --out results/offline-cpu-grid
# ISIC 2018 is imbalanced (7 classes, nevi ~2/3): the four methods with the highest validation AUC on it with plain
# cross-entropy (full_ft, LoRA-C, two_stage, peft LoRA; MetaLR's is not held out) also with the inverse-frequency
# loss (loss is part of the run key, so these are their own rows beside the plain-CE ones)
sweep --preset offline-cpu --datasets isic2018 --methods full_ft,lora_c,two_stage,peft_lora --loss weighted_ce \
  --out results/offline-cpu-grid
sweep --preset medmnist-v2 --out results/medmnist-v2
if [[ "$GPU_TABLES" == 1 ]]; then
  sweep --preset medmnist-v2-224 --out results/medmnist-v2
  sweep --preset paper --out results/paper
else
  echo "medmnist-v2-224 and paper presets skipped: no GPU here (pass --gpu-tables to run them anyway)" >&2
fi

# Reports from the records (each sweep also writes its own; cheap and idempotent).
for out in results/offline-cpu results/medmnist-v2 results/paper; do
  if [[ -d "$out/runs" ]]; then step python -m benchmarks.report "$out" --reference full_ft; fi
done
step python -m benchmarks.report results/offline-cpu-grid --reference full_ft --select-on val
step python -m benchmarks.published results/medmnist-v2 --to results/medmnist-v2
if [[ "$GPU_TABLES" == 1 ]]; then DEV=cuda; SIZES=(--batch-size 64,32); else DEV=cpu; SIZES=(--batch-size 32,8 --steps 10 --warmup 3 --warmup-seconds 3); fi
step python -m benchmarks.performance --backbone resnet50 --img-size 64,224 "${SIZES[@]}" --device "$DEV" \
  --out "results/performance-$DEV"   # -> results/performance-<device>.md and results/performance.md
# The offline table's backbone at its two sizes, with the sweep / bare column from the grid's records
step python -m benchmarks.performance --backbone efficientnet_lite0 --img-size 64,224 --batch-size 64,32 --steps 10 \
  --warmup 3 --preset offline-cpu --device "$DEV" --records results/offline-cpu-grid --out "results/performance-$DEV-lite0"
exit "$status"

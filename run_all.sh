#!/usr/bin/env bash
# Reproduce every table: the offline-cpu preset always, the paper preset only on a GPU machine (or --paper).
# Finished runs are skipped (records in results/<preset>/runs), interrupted ones resume from their checkpoint,
# so this script can simply be run again after a crash.
#
# Expected runtimes:
#   offline-cpu  ~6-9 h on 2 CPU cores (81 runs, EfficientNet-Lite0 at 64 px; see the preset's header)
#   paper        ~4-6 GPU-days on one H100 (81 runs, ResNet-50 at 224 px; needs network for the weights)
#   reports      < 1 min per preset
#
# Usage: ./run_all.sh [--paper] [--retry-failed] [extra flags passed to benchmarks.run]
set -euo pipefail
cd "$(dirname "$0")"
export PETL_DATA_ROOT="${PETL_DATA_ROOT:-$(cd .. && pwd)/shared/data}"

RUN_PAPER=0
EXTRA=()
for arg in "$@"; do
  case "$arg" in
    --paper) RUN_PAPER=1 ;;
    *) EXTRA+=("$arg") ;;
  esac
done
if python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then RUN_PAPER=1; fi

status=0
python -m benchmarks.run --preset offline-cpu --out results/offline-cpu --no-progress "${EXTRA[@]}" || status=$?
if [[ "$RUN_PAPER" == 1 ]]; then
  python -m benchmarks.run --preset paper --out results/paper --no-progress "${EXTRA[@]}" || status=$?
else
  echo "paper preset skipped: no GPU here (pass --paper to run it anyway)" >&2
fi
# Rebuild the reports from the records (also done at the end of each sweep; cheap and idempotent).
for out in results/offline-cpu results/paper; do
  [[ -d "$out/runs" ]] && python -m benchmarks.report "$out" --reference full_ft
done
exit "$status"

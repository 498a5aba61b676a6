#!/usr/bin/env bash
# The one script a lent GPU runs (docs/tuning.md): 8 minutes of wall time at most, every file
# under one folder, at most 8 files (a lent machine hands back few).
#
#   bench/gpu_check.sh [--dry-run] [OUT_DIR]      OUT_DIR default: $OUT, else runs/gpu-check-<UTC>
#
#   1. environment, editable install (no downloads: pip install --no-deps --no-build-isolation -e .)
#   2. GPU tests: the equivalence sweep on CUDA, bitwise-deterministic reruns and races
#      (pytest -m gpu tests/kernels), large logits on CUDA
#   3. flashref tune (time-boxed): this device's tuned table, written where the dispatcher reads
#      it (kernels/tuned/) and copied to OUT_DIR
#   4. flashref bench --quick with the tuned table, beside torch SDPA's flash / efficient / cuDNN
#      backends and the measured matmul ceiling: JSON, Markdown, PNG
#
# Files: gpu_check.log (every step's output), the tuned table (*.json), bench/bench.json,
# bench/bench.jsonl, bench/results.md, bench/attention_tflops_bfloat16.png: 6.
#
# --dry-run (any machine, no GPU): checks the plan — the step budgets fit, the tuner's plan
# and the GPU test selection resolve (pytest --collect-only), the commands parse — and writes
# gpu_check.log; nothing is installed or measured.
#
# Environment knobs: FLASHREF_GPU_BUDGET_S (total, default 480), PYTHON (default python3),
# FLASHREF_SKIP_INSTALL=1 (use the flashref already installed).
# Needs only what the GPU image has (torch 2.11, triton 3.6, python 3.12, pytest, numpy, rich,
# matplotlib). A failing step is logged and the next one still runs; the exit status is
# non-zero if any step failed.
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
PY=${PYTHON:-python3}
OUT_DIR=${1:-${OUT:-runs/gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}}
BUDGET=${FLASHREF_GPU_BUDGET_S:-480}
# Step caps in seconds (each also bounded by what is left); the rest goes to the bench sweep.
INSTALL_CAP=60
TESTS_CAP=110
TUNE_CAP=150        # flashref tune --time-budget; a compile in flight may overrun it by ~20 s
TUNE_SLACK=30
TAIL=40             # kept for the bench's matmul ceiling, plots and the file listing
MIN_BENCH=60
mkdir -p "$OUT_DIR"
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( BUDGET - $(elapsed) )); }
cap() { local want=$1 room=$(( $(left) - TAIL )); [ "$room" -lt "$want" ] && want=$room; [ "$want" -lt 1 ] && want=1; echo "$want"; }
status=0
exec > >(tee -a "$OUT_DIR/gpu_check.log") 2>&1
step() { echo; echo "== [$(elapsed)s] $*"; }
fail() { echo "!! $*"; status=1; }

if [ $(( INSTALL_CAP + TESTS_CAP + TUNE_CAP + TUNE_SLACK + MIN_BENCH + TAIL )) -gt "$BUDGET" ]; then
    fail "the step caps do not fit the budget of $BUDGET s"
fi

step "environment ($([ $DRY = 1 ] && echo dry run || echo GPU run), budget $BUDGET s, out $OUT_DIR)"
date -u
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv 2>/dev/null || echo "nvidia-smi unavailable"
$PY - <<'EOF'
import platform, torch, triton, numpy
print("python", platform.python_version(), "torch", torch.__version__, "triton", triton.__version__,
      "numpy", numpy.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA DEVICE")
raise SystemExit(0 if torch.cuda.is_available() else 3)
EOF
has_cuda=$?
if [ $has_cuda -ne 0 ] && [ $DRY = 0 ]; then
    echo "no CUDA device: this script is for a GPU machine (here: bench/gpu_check.sh --dry-run," \
         "flashref verify --quick, flashref bench --cpu)"
    exit 1
fi

GPU_TESTS=(tests/kernels -m gpu)
LOGIT_TESTS=(tests/kernels/test_flash_attention.py -m "not slow" -k large_logits)
TUNE_ARGS=(--time-budget "$TUNE_CAP")
BENCH_ARGS=(--quick --impl flashref,sdpa_flash,sdpa_efficient,sdpa_cudnn --out "$OUT_DIR/bench")

if [ $DRY = 1 ]; then
    step "dry run: GPU test selection (collect only)"
    text=$($PY -m pytest -o addopts="" -q --collect-only -p no:cacheprovider "${GPU_TESTS[@]}") || fail "collect gpu tests"
    echo "$text" | tail -n 2
    text=$($PY -m pytest -o addopts="" -q --collect-only -p no:cacheprovider "${LOGIT_TESTS[@]}") || fail "collect logit test"
    echo "$text" | tail -n 2
    step "dry run: flashref tune plan (sm_90)"
    text=$($PY -m flashref tune --dry-run --arch sm_90 "${TUNE_ARGS[@]}") || fail "tune plan"
    echo "$text" | head -n 4
    step "dry run: flashref bench arguments"
    $PY -m flashref bench --help >/dev/null && echo "flashref bench ${BENCH_ARGS[*]} --time-budget N" || fail "bench args"
    step "dry run: budget: install $INSTALL_CAP + tests $TESTS_CAP + tune $TUNE_CAP(+$TUNE_SLACK) + bench >= $MIN_BENCH + tail $TAIL <= $BUDGET s"
    step "done (dry run) in $(elapsed) s, status $status"
    exit $status
fi

step "install (editable, no downloads)"
if [ "${FLASHREF_SKIP_INSTALL:-0}" = "1" ]; then
    echo "skipped (FLASHREF_SKIP_INSTALL=1)"
elif ! timeout -k 5 "$(cap $INSTALL_CAP)" $PY -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -20; then
    fail "pip install failed"
fi
$PY -c "import flashref, flashref.kernels; print('flashref', flashref.__version__, 'imports')" || fail "flashref does not import"

# The repo's addopts name pytest-benchmark's flag; they are replaced by what this step needs.
step "GPU tests: equivalence on CUDA, determinism (bitwise reruns), races; large logits (cap $TESTS_CAP s)"
t=$(cap $TESTS_CAP)
timeout -k 10 "$t" $PY -m pytest -o addopts="" -q -ra -p no:cacheprovider "${GPU_TESTS[@]}"
rc=$?; echo "gpu tests exit $rc"; [ $rc -eq 0 ] || fail "gpu tests (exit $rc; 124 = time cap)"
timeout -k 5 "$(cap 40)" $PY -m pytest -o addopts="" -q -p no:cacheprovider "${LOGIT_TESTS[@]}"
rc=$?; echo "large-logit test exit $rc"; [ $rc -eq 0 ] || fail "large logits (exit $rc)"

step "flashref tune (time box $TUNE_CAP s)"
budget=$(cap $TUNE_CAP)
timeout -k 10 $(( budget + TUNE_SLACK )) $PY -m flashref tune --time-budget "$budget"
rc=$?; echo "tune exit $rc"; [ $rc -eq 0 ] || fail "tune (exit $rc)"
cp kernels/tuned/*.json "$OUT_DIR"/ 2>/dev/null && ls "$OUT_DIR"/*.json || echo "no tuned table written"

SWEEP=$(( $(left) - TAIL ))
if [ "$SWEEP" -lt 30 ]; then
    fail "only $(left) s left: bench skipped"
else
    step "flashref bench ${BENCH_ARGS[*]} (measuring for at most $SWEEP s)"
    timeout -k 10 $(( SWEEP + TAIL - 5 )) $PY -m flashref bench "${BENCH_ARGS[@]}" --time-budget "$SWEEP"
    rc=$?; echo "bench exit $rc"; [ $rc -eq 0 ] || fail "bench (exit $rc)"
fi

step "done in $(elapsed) s, status $status; files:"
find "$OUT_DIR" -type f | sort
exit $status

#!/usr/bin/env bash
# One borrowed GPU, a few minutes: install, the `gpu` tests, `flashref verify` on CUDA,
# then the TFLOP/s sweep with whatever time is left. Everything lands in one folder.
#
#   bench/gpu_check.sh [OUT_DIR]        default: $OUT, else runs/gpu-check-<UTC time>
#
# Environment knobs:
#   FLASHREF_GPU_BUDGET_S   total seconds for the whole script (default 480 = 8 min)
#   FLASHREF_BENCH_FULL=1   the full sweep (every length, head dim, dtype) instead of --quick;
#                           give it a bigger budget (it takes well over 8 minutes)
#   PYTHON                  interpreter to use (default python3)
#   FLASHREF_SKIP_INSTALL=1 use the flashref already installed (skip the editable install)
#
# Few files on purpose (a borrowed machine may hand back only a handful): gpu_check.log holds
# every step's output; verify.json; bench/bench.json, bench.jsonl, results.md and the PNGs.
#
# It needs only what the GPU image has (torch, triton, numpy, rich, matplotlib, pytest):
# nothing is downloaded. A step that fails is logged and the next one still runs; the
# exit status is non-zero if any step failed.
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
OUT_DIR=${1:-${OUT:-runs/gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}}
BUDGET=${FLASHREF_GPU_BUDGET_S:-480}
mkdir -p "$OUT_DIR"
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( BUDGET - $(elapsed) )); }
status=0
exec > >(tee -a "$OUT_DIR/gpu_check.log") 2>&1

step() { echo; echo "== [$(elapsed)s] $*"; }

step "environment"
date -u
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "nvidia-smi unavailable"
$PY - <<'EOF'
import platform, torch, triton, numpy
print("python", platform.python_version(), "torch", torch.__version__, "triton", triton.__version__,
      "numpy", numpy.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA DEVICE")
raise SystemExit(0 if torch.cuda.is_available() else 3)
EOF
if [ $? -ne 0 ]; then
    echo "no CUDA device: this script is for a GPU machine (on a CPU: flashref verify --quick, flashref bench --cpu)"
    exit 1
fi

step "install (editable, no downloads)"
if [ "${FLASHREF_SKIP_INSTALL:-0}" = "1" ]; then
    echo "skipped (FLASHREF_SKIP_INSTALL=1)"
elif ! $PY -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -20; then
    echo "pip install failed"; status=1
fi
$PY -c "import flashref, flashref.kernels; print('flashref', flashref.__version__, 'imports')" || status=1

# The repo's addopts name pytest-benchmark's flag; the GPU image may lack the plugin, so
# they are replaced here by what this step needs.
step "gpu tests: pytest -m gpu tests/kernels (cap 180 s)"
timeout -k 10 180 $PY -m pytest -o addopts="" -ra -m gpu tests/kernels -p no:cacheprovider
rc=$?; echo "gpu tests exit $rc"
# pytest's 5 means "no test selected": reported, not a failure of the kernels.
[ $rc -eq 0 ] || [ $rc -eq 5 ] || status=1

step "flashref verify --quick on CUDA (cap 120 s)"
timeout -k 10 120 $PY -m flashref verify --quick --json "$OUT_DIR/verify.json"
rc=$?; echo "verify exit $rc"; [ $rc -eq 0 ] || status=1

PRESET=--quick
[ "${FLASHREF_BENCH_FULL:-0}" = "1" ] && PRESET=--full
# Keep ~45 s for the matmul ceiling, plots and tables after the measuring stops.
SWEEP_BUDGET=$(( $(left) - 45 ))
if [ "$SWEEP_BUDGET" -lt 30 ]; then
    echo "only $(left) s left: sweep skipped"; status=1
else
    step "flashref bench $PRESET (measuring for at most ${SWEEP_BUDGET} s)"
    timeout -k 10 $(( SWEEP_BUDGET + 40 )) $PY -m flashref bench $PRESET --out "$OUT_DIR/bench" \
        --time-budget "$SWEEP_BUDGET"
    rc=$?; echo "bench exit $rc"; [ $rc -eq 0 ] || status=1
fi

step "done in $(elapsed) s, status $status; files:"
find "$OUT_DIR" -type f | sort
exit $status

#!/usr/bin/env bash
# One call on a lent GPU machine (device time is minutes): build with CUDA, then, each stage
# time-boxed so that a hang or a slow stage cannot eat the others:
#   tests      the CUDA tests (every kernel against the CPU one, host-sync and CUDA-graph tests)
#   sanitizer  compute-sanitizer memcheck, racecheck and synccheck over small CUDA tests
#   bench      the op benchmarks, then the training-epoch ones (mmfast vs pure PyTorch)
#   suite      the whole test suite on the GPU machine (CI runs it on CPU already)
#   sweep      an 8-point LightGCN grid, serial on the GPU against mmfast.tune with four trials
#              sharing it (--gpus-per-trial 0.25); needs ray[tune] on the machine
# Everything lands in $OUT: info.txt, build.log, tests.log, sanitizer-<tool>.log,
# bench-ops.{log,json} and bench-train.{log,json} (the mmfast-vs-torch tables), suite.log,
# sweep.log.
# Choose stages with GPU_STAGES (default "tests sanitizer bench"), time boxes with GPU_*_S.
# The device machine has torch but no internet, hence --no-build-isolation --no-deps.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
export MMFAST_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
export PYTHONUNBUFFERED=1
STAGES=${GPU_STAGES:-tests sanitizer bench}
say() { printf '\n== [%ds] %s\n' "$SECONDS" "$*" | tee -a "$OUT/info.txt"; }
want() { [[ " $STAGES " == *" $1 "* ]]; }
rc=0

{ date -u; git log -1 --format='commit %H' 2>/dev/null; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; } >"$OUT/info.txt"
say "build"
# The README's developer install (kernels built in place): `python -c`/`python -m` below run in the
# repository root, where Python imports the source tree first.
if ! python -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
  tail -60 "$OUT/build.log"
  exit 1
fi
python -c "import mmfast; mmfast.info()" | tee -a "$OUT/info.txt"

if want tests; then
  say "CUDA tests"
  timeout "${GPU_TESTS_S:-240}" pytest python_tests -m cuda -q -p no:cacheprovider -rfE 2>&1 \
    | tee "$OUT/tests.log" | tail -30
  rc=${PIPESTATUS[0]}
fi

if want sanitizer; then
  # Small shapes only: the sanitizers slow kernels down 10-100x.
  small=(
    "python_tests/test_graph.py::test_cuda_corrupt_csr_from_torch_ops_does_not_fault"
    python_tests/test_solosim.py python_tests/test_club.py python_tests/test_topk.py
  )
  sanitizer=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
  for tool in memcheck racecheck synccheck; do
    say "compute-sanitizer --tool $tool"
    timeout "${GPU_SANITIZER_S:-90}" "$sanitizer" --tool "$tool" --error-exitcode 9 \
      python -m pytest -m cuda -q -x -p no:cacheprovider "${small[@]}" \
      -k "not 20000 and not 23033 and not 5000 and not 3000 and not 2048 and not 4096" \
      >"$OUT/sanitizer-$tool.log" 2>&1
    echo "exit $?" | tee -a "$OUT/sanitizer-$tool.log"
    grep -E "ERROR SUMMARY|Error|passed|failed" "$OUT/sanitizer-$tool.log" | tail -5
  done
fi

if want bench; then
  # Two sessions, each writing its table when it ends: a slow epoch benchmark hitting its
  # time box cannot take the op table with it.
  say "op benchmarks"
  MMFAST_BENCH_JSON="$OUT/bench-ops.json" timeout "${GPU_BENCH_OPS_S:-240}" pytest benchmarks \
    -q -p no:cacheprovider --ignore benchmarks/bench_train.py \
    --benchmark-columns=median,iqr,rounds 2>&1 | tee "$OUT/bench-ops.log" | grep -A60 "mmfast vs pure"
  say "training-epoch benchmarks"
  MMFAST_BENCH_JSON="$OUT/bench-train.json" timeout "${GPU_BENCH_TRAIN_S:-300}" pytest \
    benchmarks/bench_train.py -q -p no:cacheprovider --benchmark-columns=median,iqr,rounds \
    2>&1 | tee "$OUT/bench-train.log" | grep -A60 "mmfast vs pure"
fi

if want suite; then
  say "whole test suite"
  timeout "${GPU_SUITE_S:-600}" pytest python_tests -q -p no:cacheprovider 2>&1 \
    | tee "$OUT/suite.log" | tail -25
fi
if want sweep; then
  say "sweep: serial against four trials a GPU"
  if python -c "import ray.tune" 2>/dev/null; then
    timeout "${GPU_SWEEP_S:-300}" python benchmarks/sweep_speed.py --device cuda \
      --gpus-per-trial 0.25 --workers 4 --epochs 20 --seeds 2 2>&1 | tee "$OUT/sweep.log" | tail -8
  else
    echo "ray[tune] is not installed here (pip install 'mmfast[tune]'): sweep stage skipped" \
      | tee "$OUT/sweep.log"
  fi
fi
say "done"
exit "$rc"

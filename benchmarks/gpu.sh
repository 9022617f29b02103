#!/usr/bin/env bash
# One call on a lent GPU machine: build with CUDA, run the whole test suite (the CUDA tests
# compare every kernel with the CPU one), then the benchmarks. Everything lands in $OUT:
#   info.txt, build.log, tests.log, bench.log, bench.json (the mmfast-vs-torch table).
# The device machine has torch but no internet, hence --no-build-isolation --no-deps.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
export MMFAST_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
export PYTHONUNBUFFERED=1

{ date -u; git log -1 --format='commit %H' 2>/dev/null; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; } >"$OUT/info.txt"
if ! python -m pip install --no-build-isolation --no-deps . >"$OUT/build.log" 2>&1; then
  tail -60 "$OUT/build.log"
  exit 1
fi
python -c "import mmfast; mmfast.info()" | tee -a "$OUT/info.txt"

pytest python_tests -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -25
tests_rc=${PIPESTATUS[0]}

MMFAST_BENCH_JSON="$OUT/bench.json" pytest benchmarks -q -p no:cacheprovider \
  --benchmark-columns=median,iqr,rounds 2>&1 | tee "$OUT/bench.log" | grep -A40 "mmfast vs pure"
exit "$tests_rc"

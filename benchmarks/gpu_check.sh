#!/usr/bin/env bash
# The GPU device check (Pallas issue): compiled kernel tests, then kernel vs xla timings (plus
# flash-linear-attention's chunk_gated_delta_rule when its wheel is carried in .whl/). One H100/H200, < 6 min.
#
#   bash benchmarks/gpu_check.sh [LOG_DIR]        # LOG_DIR defaults to $OUT, else /tmp/atlas_gpu_check
#
# Needs JAX with CUDA, flax and pytest on the machine (the GPU image has them). Wheels in .whl/ (for example
# flash-linear-attention, ml-collections) are installed into /tmp/site first. Writes env.txt, tests.log,
# bench.log into LOG_DIR and appends the timing table to benchmarks/RESULTS.md (copied to LOG_DIR as well).
# Exits non-zero if the tests or the benchmark fail.
set -uo pipefail
log_dir="${1:-${OUT:-/tmp/atlas_gpu_check}}"
mkdir -p "$log_dir"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"; } \
  2>&1 | tee "$log_dir/env.txt"

start=$SECONDS
# The compiled twins of the interpret-mode cases and a realistic shape (TestCompiledOnGPU).
timeout 170 python3 -m pytest tests/pallas -q -p no:cacheprovider -m "gpu" 2>&1 | tee "$log_dir/tests.log"
tests_rc=${PIPESTATUS[0]}
echo "tests: rc=$tests_rc in $((SECONDS - start)) s" | tee -a "$log_dir/tests.log"

start=$SECONDS
# SIGINT at the limit: the benchmark then reports the cells it has measured.
timeout -s INT 160 python3 -m benchmarks.pallas_vs_xla 2>&1 | tee "$log_dir/bench.log"
bench_rc=${PIPESTATUS[0]}
echo "benchmark: rc=$bench_rc in $((SECONDS - start)) s" | tee -a "$log_dir/bench.log"
cp benchmarks/RESULTS.md "$log_dir/RESULTS.md"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]

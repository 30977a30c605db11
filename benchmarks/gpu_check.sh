#!/usr/bin/env bash
# The GPU device check: kernel vs xla timings, the compiled kernel tests, layer scaling on the kernels, then
# flash-linear-attention's chunk_gated_delta_rule when its wheels are carried in .whl/.
# One H100/H200, at most 9.5 minutes (each step has its own limit: 190 + 130 + 150 + 100 s; 2026-11-27 on an
# H200, with the limits of then and layer scaling at T = 4K and 16K only: 7 min 48 s).
#
#   bash benchmarks/gpu_check.sh [LOG_DIR]        # LOG_DIR defaults to $OUT, else /tmp/atlas_gpu_check
#
# Needs JAX with CUDA, flax and pytest on the machine (the GPU image has them). Wheels in .whl/ (for example
# flash-linear-attention and fla-core) are installed into /tmp/site first. Writes env.txt, tests.log,
# bench.log, layers.log (fla.log) into LOG_DIR and appends the timing tables to benchmarks/RESULTS.md. The device
# runs on a copy of the working tree, so that RESULTS.md does not come back by itself: the sections this run
# appended are written to LOG_DIR/RESULTS.new.md, and merging them is one append on the development machine,
#   cat LOG_DIR/RESULTS.new.md >> benchmarks/RESULTS.md
# (the whole device-side file is LOG_DIR/RESULTS.md). Each step has its own time limit; exits non-zero if any step
# fails.
set -uo pipefail
log_dir="${1:-${OUT:-/tmp/atlas_gpu_check}}"
mkdir -p "$log_dir"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
# JAX would otherwise take 75% of the GPU up front: the test workers and PyTorch (fla) share the card.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
results_lines=$( (cat benchmarks/RESULTS.md 2> /dev/null || true) | wc -l)  # RESULTS.new.md: what follows

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax',
optax.__version__, jax.devices())"; } \
  2>&1 | tee "$log_dir/env.txt"

start=$SECONDS
# Kernel vs xla first: one TF32 pass (the default BlockSizes.dot) at value blocks 16 (the default), 32 and 64
# for the linear memory. No mlp cells: the mlp kernels exceeded an H200's shared memory at every size tried
# (2026-11-27; add --mlp_lengths=2048 once their tiles are split). Every cell compiles on 12 threads up front;
# cells not compiled after 140 s are reported as still compiling. SIGINT at the limit: the benchmark then
# reports the cells it has measured.
timeout -k 20 -s INT 190 python3 -m benchmarks.pallas_vs_xla --lengths=2048,16384 --mlp_lengths= \
  --dots=tf32 --value_blocks=16,32,64 --nofla --compile_threads=12 --compile_budget_s=140 2>&1 \
  | tee "$log_dir/bench.log"
bench_rc=${PIPESTATUS[0]}
echo "benchmark: rc=$bench_rc in $((SECONDS - start)) s" | tee -a "$log_dir/bench.log"

start=$SECONDS
# The compiled twins of the interpret-mode cases and a realistic shape (TestCompiledOnGPU).
# Eight workers: most of the time is Triton compilation, which runs on the CPU: the sampled cases' kernels at small
# shapes with exact float32 matmuls (BlockSizes.dot="ieee", under a minute each) and the realistic shape with the
# default TF32 ones.
timeout 130 python3 -m pytest tests/pallas -v -n 8 -p no:cacheprovider -m "gpu" 2>&1 | tee "$log_dir/tests.log"
tests_rc=${PIPESTATUS[0]}
echo "tests: rc=$tests_rc in $((SECONDS - start)) s" | tee -a "$log_dir/tests.log"

start=$SECONDS
# Layer scaling: per memory layer an xla row, then a kernel row, in one command, with a memory-plan limit from the
# card (70% of its memory: ~98 GiB on an H200, ~55 GiB on an 80 GB H100; the CPU default of 12 GiB kept attention's
# forward+backward from running at 16K), so that attention runs as far as the card allows and its crossing with
# the memory layers can be measured. Lengths: 1K and 64K added to 4K and 16K, no more: with the two earlier
# lengths this step took 125 of its 150 s (2026-11-27, compiling one function at a time), so the cells now
# compile on 12 threads before any is timed (--compile_budget_s: after 90 s the cells still compiling are
# reported as such and the rest are timed). Past the limit the table keeps the cells measured (SIGINT).
max_plan_gib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2> /dev/null \
  | head -1 | awk '$1 + 0 > 0 { printf "%d", $1 * 0.7 / 1024 }')
timeout -k 20 -s INT 150 python3 -m benchmarks.layer_scaling --implementations=xla,pallas \
  --lengths=1024,4096,16384,65536 --max_plan_gib="${max_plan_gib:-12}" --compile_threads=12 \
  --compile_budget_s=90 2>&1 | tee "$log_dir/layers.log"
layers_rc=${PIPESTATUS[0]}
echo "layer scaling: rc=$layers_rc in $((SECONDS - start)) s" | tee -a "$log_dir/layers.log"

# Last, flash-linear-attention against the xla path (its Triton autotuning compiles for minutes; a hung
# autotune does not take the other steps with it). Not part of the exit status.
if python3 -c "import fla" 2> /dev/null; then
  timeout -k 10 -s INT 100 python3 -m benchmarks.pallas_vs_xla --lengths=2048 --windows=1 --mlp_lengths= --dots= \
    2>&1 | tee "$log_dir/fla.log"
fi
cp benchmarks/RESULTS.md "$log_dir/RESULTS.md"
tail -n +$((results_lines + 1)) benchmarks/RESULTS.md > "$log_dir/RESULTS.new.md"  # this run's sections only
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$layers_rc" -eq 0 ]

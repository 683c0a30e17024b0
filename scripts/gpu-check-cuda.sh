#!/usr/bin/env bash
# Run the CUDA backend's tests on a GPU machine that has no Rust toolchain,
# with test binaries built elsewhere:
#
#   here:  cargo test --release -p braid-runtime --lib --no-run
#          scripts/gpu-check-cuda.sh --stage .bin-cuda   # copies the binary
#   there: scripts/gpu-check-cuda.sh [BIN_DIR] [OUT_DIR]
#
# Runs every backend::cuda test (kernels vs the CPU f64 reference, OOM, graph
# replay, events, kernel cache), then the sticky-error test alone in its own
# process (it poisons the context), then compute-sanitizer (memcheck over the
# kernel tests, racecheck and synccheck over the shared-memory kernels) when
# it is installed, then (if staged) `braid check --device
# cuda` and the pool stress tests on CUDA streams. Logs go to OUT_DIR.
set -uo pipefail

if [[ "${1:-}" == "--stage" ]]; then
    dest=${2:-.bin-cuda}
    mkdir -p "$dest"
    bin=$(cargo test --release -p braid-runtime --lib --no-run --message-format=json 2>/dev/null |
        python3 -c 'import sys,json
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]=="braid_runtime": print(m["executable"])' | tail -1)
    cp "$bin" "$dest/runtime-tests"
    cp "$0" "$dest/"
    echo "staged $bin -> $dest/runtime-tests"
    exit 0
fi

bin_dir=${1:-.bin-cuda}
out=${2:-${OUT:-/tmp/gpu-check-cuda}}
mkdir -p "$out"

# Find the CUDA 13 cuBLAS and NVRTC (toolkit or pip wheels) for dynamic loading.
for lib in libcublas.so.13 libnvrtc.so.13; do
    d=$(find /usr/local/cuda*/ /usr/lib/x86_64-linux-gnu /opt /usr/local/lib -name "$lib" -print -quit 2>/dev/null | xargs -r dirname)
    [[ -n "$d" ]] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" | tee "$out/env.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$out/env.txt"

t=$bin_dir/runtime-tests
status=0
echo "== backend::cuda tests"
"$t" backend::cuda --test-threads=4 --nocapture 2>&1 | tee "$out/cuda-tests.log" || status=1
echo "== sticky error (own process)"
"$t" --ignored --exact backend::cuda::tests::sticky_error_poisons_the_device --nocapture 2>&1 | tee "$out/cuda-poison.log" || status=1
if command -v compute-sanitizer >/dev/null && [[ "${SANITIZE:-1}" == 1 ]]; then
    echo "== compute-sanitizer memcheck (kernel tests)"
    compute-sanitizer --tool memcheck --error-exitcode 9 "$t" backend::cuda::tests:: --skip out_of_memory --skip events_and --test-threads=1 \
        >"$out/memcheck.log" 2>&1 || status=1
    grep -E "ERROR SUMMARY|test result" "$out/memcheck.log" | tee "$out/cuda-memcheck-summary.log"
    echo "== compute-sanitizer racecheck (shared-memory kernels)"
    for f in layer_norm_softmax_l2 attention_matches attention_varlen gather_and_mean_pool; do
        BRAID_ATTN_SMALL=1 compute-sanitizer --tool racecheck --racecheck-report all "$t" "$f" --test-threads=1 >"$out/racecheck-$f.log" 2>&1 || status=1
        grep -E "RACECHECK SUMMARY" "$out/racecheck-$f.log" | sed "s/^/$f: /" | tee -a "$out/cuda-racecheck-summary.log"
    done
    echo "== compute-sanitizer synccheck (barriers in the shared-memory kernels)"
    for f in layer_norm_softmax_l2 attention_matches attention_varlen gather_and_mean_pool; do
        BRAID_ATTN_SMALL=1 compute-sanitizer --tool synccheck --error-exitcode 9 "$t" "$f" --test-threads=1 >"$out/synccheck-$f.log" 2>&1 || status=1
        grep -E "ERROR SUMMARY" "$out/synccheck-$f.log" | sed "s/^/$f: /" | tee -a "$out/cuda-synccheck-summary.log"
    done
fi
# The whole-system checks, when a braid binary and the stress-test binary are
# staged too (cp target/release/braid BIN_DIR/; the stress binary from
# `cargo test --release -p braid-runtime --test stress --no-run`, as
# BIN_DIR/stress, and the device-test binary from `--test device`, as BIN_DIR/device).
if [[ -x "$bin_dir/braid" ]]; then
    echo "== braid check --device cuda (every op and module vs f64, MiniLM if installed, 16 threads x 200 forwards)"
    "$bin_dir/braid" check --device cuda 2>&1 | tee "$out/cuda-braid-check.log" | tail -3 || status=1
fi
if [[ -x "$bin_dir/stress" ]]; then
    echo "== pool exhaustion and thread churn on real CUDA streams"
    BRAID_TEST_DEVICE=cuda "$bin_dir/stress" --nocapture --test-threads 1 2>&1 | tee "$out/cuda-stress.log" | grep -E "leaked|test result" || status=1
fi
if [[ -x "$bin_dir/device" ]]; then
    echo "== event and lifecycle tests on CUDA streams"
    BRAID_TEST_DEVICE=cuda "$bin_dir/device" event_dropped --nocapture --test-threads 1 2>&1 | tee "$out/cuda-device.log" | grep -E "event_dropped|test result" || status=1
fi
if [[ "${BENCH:-1}" == 1 ]]; then
    echo "== bench (mlp, batch 1)"
    "$t" --ignored --exact backend::cuda::tests::bench_mlp --nocapture 2>&1 | tee "$out/cuda-bench.log" || status=1
fi
echo "== summary"
grep -h "CHECK\|BENCH\|TFLOP\|test result\|FAILED\|panicked\|ERROR SUMMARY\|RACECHECK" "$out"/cuda-*.log | sort | uniq | tail -100
exit $status

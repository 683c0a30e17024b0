#!/usr/bin/env bash
# The CUDA backend's tests with the new dtype and packed-attention kernels,
# then compute-sanitizer memcheck, racecheck and synccheck on the packed
# (varlen) attention test (tensor-core and CUDA-core kernels, f32/bf16/f16,
# small shapes). Test binary staged elsewhere:
#
#   here:  scripts/gpu-check-cuda.sh --stage .bin-cuda && strip .bin-cuda/runtime-tests
#   there: scripts/gpu-tc-kernels.sh [BIN_DIR] [OUT_DIR]
set -uo pipefail
bin_dir=${1:-.bin-cuda}
out=${2:-${OUT:-/tmp/gpu-tc-kernels}}
mkdir -p "$out"
for lib in libcublas.so.13 libnvrtc.so.13; do
    d=$(find /usr/local/cuda*/ /usr/lib/x86_64-linux-gnu /opt /usr/local/lib -name "$lib" -print -quit 2>/dev/null | xargs -r dirname)
    [[ -n "$d" ]] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
t=$bin_dir/runtime-tests
status=0
echo "== backend::cuda tests"
"$t" backend::cuda --test-threads=4 --nocapture > "$out/cuda-tests.log" 2>&1 || status=1
grep -E "CHECK attention_varlen|^test result|FAILED|panicked" "$out/cuda-tests.log" | sort -u | tail -40
grep -E "CHECK .* f16" "$out/cuda-tests.log" | awk '{print $2}' | sort | uniq -c | head -20
if command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck synccheck; do
        extra=""; [[ $tool == racecheck ]] && extra="--racecheck-report all"
        BRAID_ATTN_SMALL=1 compute-sanitizer --tool $tool $extra --error-exitcode 9 "$t" attention_varlen --test-threads=1 >"$out/$tool-varlen.log" 2>&1 || status=1
        echo "$tool: $(grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result" "$out/$tool-varlen.log" | tr '\n' ' ')"
    done
else
    echo "SKIPPED (compute-sanitizer not installed)"
fi
exit $status

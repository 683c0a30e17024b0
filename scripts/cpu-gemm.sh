#!/usr/bin/env bash
# The CPU GEMM on the workloads' shapes (MiniLM: m = batch x tokens, n/k in
# {384, 1152, 1536}; mlp): matrixmultiply on output blocks vs braid's
# register-tiled kernel packing per call vs on pre-packed weights, on one
# pool thread and on all, and -- where the CPU has AVX-512F -- the packed
# kernel's AVX2 tile (BRAID_CPU_AVX512=0) vs its AVX-512 tile (the default there), whose outputs
# must hash the same (same FMA chain per element); and PyTorch CPU's
# linear (MKL) on the same shapes (bench/peers/torch_gemm.py), if torch imports.
#
#   scripts/cpu-gemm.sh OUTDIR [--quick]
#
# Needs the example binary (GEMM_SHAPES, default .bin/gemm_shapes, else
# target/release/examples/gemm_shapes), built elsewhere with
#   cargo build --release -p braid-runtime --no-default-features --example gemm_shapes
# No cargo or Rust toolchain is needed here.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/cpu-gemm.sh OUTDIR [--quick]}
quick=${2:-}
if [ -n "${GEMM_SHAPES:-}" ]; then bin=$GEMM_SHAPES; elif [ -x .bin/gemm_shapes ]; then bin=.bin/gemm_shapes; else bin=target/release/examples/gemm_shapes; fi
[ -x "$bin" ] || { echo "no gemm_shapes binary at $bin (set GEMM_SHAPES=...)" >&2; exit 2; }
mkdir -p "$out"
{ lscpu 2>/dev/null | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-400; uptime; } > "$out/cpu.txt"
avx512=0
grep -qw avx512f /proc/cpuinfo 2>/dev/null && avx512=1
rc=0
for threads in 1 all; do
  tenv=()
  [ "$threads" = 1 ] && tenv=(BRAID_CPU_THREADS=1)
  for a in 0 $( [ $avx512 = 1 ] && echo 1 ); do
    f="$out/gemm-threads-$threads-avx512-$a.md"
    echo "== threads $threads, BRAID_CPU_AVX512=$a" >&2
    env "${tenv[@]}" BRAID_CPU_AVX512=$a "$bin" $quick > "$f" || rc=1
    cat "$f"
  done
  if python3 -c "import torch" 2>/dev/null; then
    targs=()
    [ "$threads" = 1 ] && targs=(--threads 1)
    python3 bench/peers/torch_gemm.py $quick "${targs[@]}" > "$out/torch-gemm-threads-$threads.md" || rc=1
    cat "$out/torch-gemm-threads-$threads.md"
  fi
  if [ $avx512 = 1 ]; then
    # The last column is the output hash: AVX2 and AVX-512 tiles must agree bit for bit.
    if diff <(awk -F'|' 'NF>7 {print $2, $(NF-1)}' "$out/gemm-threads-$threads-avx512-0.md") \
            <(awk -F'|' 'NF>7 {print $2, $(NF-1)}' "$out/gemm-threads-$threads-avx512-1.md") > "$out/hash-diff-$threads.txt"; then
      echo "threads $threads: AVX-512 tile output bitwise equal to AVX2 tile on every shape" | tee -a "$out/summary.txt"
    else
      echo "threads $threads: AVX-512 tile output DIFFERS from AVX2 tile (see hash-diff-$threads.txt)" | tee -a "$out/summary.txt"; rc=1
    fi
  fi
done
exit $rc

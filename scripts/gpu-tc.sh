#!/usr/bin/env bash
# Tensor cores end to end (issue 13), braid and PyTorch on the same GPU in
# one run: `braid check --dtype f16|bf16` (ops incl. the packed tensor-core
# attention vs the f64 reference, MiniLM vs the f32 sentence-transformers
# fixture), then for each dtype (f32, f16, bf16) the MiniLM story at 128
# tokens (batch 1..512) and on the mixed-length set (seeded lengths 8..256,
# mean ~56; same rows both sides), braid then PyTorch, and `braid bench
# compare` tables. Everything lands in OUTDIR (and OUTDIR/tc.tgz).
#
#   scripts/gpu-tc.sh OUTDIR
#
# Needs: .bin/braid (BRAID=...; built elsewhere with `cargo build --release
# -p braid`, no Rust toolchain here), models/all-MiniLM-L6-v2, python3 with
# torch and sentence-transformers or transformers. DTYPES, WORKLOADS and
# QUICK (default --quick) override the sweep.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu-tc.sh OUTDIR}
braid=${BRAID:-.bin/braid}
quick=${QUICK---quick}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader > "$out/gpu.txt" 2>&1
rc=0
for dt in ${CHECK_DTYPES:-bf16 f16}; do
  echo "== check --dtype $dt" >&2
  "$braid" check --device cuda --dtype "$dt" --threads 4 --iters 20 > "$out/check-$dt.txt" 2> "$out/check-$dt.log" || rc=1
  grep -E "minilm|varlen|passed" "$out/check-$dt.txt" >&2
done
for w in ${WORKLOADS:-minilm mixed}; do
  for dt in ${DTYPES:-f32 bf16 f16}; do
    echo "== $w $dt: braid" >&2
    "$braid" bench story --device cuda --workload "$w" --dtype "$dt" $quick --json "$out/braid-$w-$dt.json" > "$out/braid-$w-$dt.md" 2> "$out/braid-$w-$dt.log" || { rc=1; tail -5 "$out/braid-$w-$dt.log" >&2; }
    echo "== $w $dt: torch" >&2
    PYTHONUNBUFFERED=1 python3 bench/peers/torch_story.py --workload "$w" --dtype "$dt" $quick --sections correctness,batching,dynamic \
      --json "$out/torch-$w-$dt.json" 2> "$out/torch-$w-$dt.log" || { rc=1; tail -5 "$out/torch-$w-$dt.log" >&2; }
    if [ -f "$out/braid-$w-$dt.json" ] && [ -f "$out/torch-$w-$dt.json" ]; then
      "$braid" bench compare "$out/braid-$w-$dt.json" "$out/torch-$w-$dt.json" > "$out/compare-$w-$dt.md" 2>&1
      grep -A8 -i "batching" "$out/compare-$w-$dt.md" | head -12 >&2
    fi
  done
done
(cd "$out" && tar czf tc.tgz --exclude tc.tgz .)
exit $rc

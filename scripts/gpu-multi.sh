#!/usr/bin/env bash
# Issue 17's measurements on one machine, from one binary, in one run:
#   1. `braid bench story --workload mlp` dynamic rows on --device cuda:0,
#      then on --device cuda:all (a replica per GPU through braid_batch::Replicas;
#      on a one-GPU host that is one replica: the cost of the multi-device path);
#   2. `braid serve` on --device cpu, then on --device cpu:0,1 (two CPU devices
#      sharing the cores), under bench/serve_load.py: does admission or
#      tokenization serialise before any GPU is involved?
#
#   scripts/gpu-multi.sh OUTDIR
#
# Needs a prebuilt braid (BRAID, default .bin/braid), python3 and, for step 2,
# models/all-MiniLM-L6-v2. REPEATS (default 2) alternates the two devices
# that many times; SECONDS_PER_STEP (default 5) and CLIENTS override the load.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu-multi.sh OUTDIR}
braid=${BRAID:-.bin/braid}
repeats=${REPEATS:-2}
secs=${SECONDS_PER_STEP:-5}
clients=${CLIENTS:-1 16 64 256}
mkdir -p "$out"
for r in $(seq 1 "$repeats"); do
  for d in cuda:0 cuda:all; do
    tag=${d/:/-}
    echo "== story mlp on $d (repeat $r)"
    "$braid" bench story --device "$d" --workload mlp --quick --json "$out/story-mlp-$tag-$r.json" > "$out/story-mlp-$tag-$r.md" 2> "$out/story-mlp-$tag-$r.err" || tail -3 "$out/story-mlp-$tag-$r.err"
  done
done
if [ -f models/all-MiniLM-L6-v2/model.safetensors ]; then
  for r in $(seq 1 "$repeats"); do
    for d in cpu cpu:0,1; do
      tag=${d/:/-}; tag=${tag/,/-}
      port=$((18000 + RANDOM % 1000))
      echo "== serve on $d (repeat $r), port $port"
      "$braid" serve --device "$d" --port "$port" --workers 2 --max-batch 64 --max-delay-ms 2 --capacity 65536 --max-client-batch-size 256 > "$out/serve-$tag-$r.log" 2>&1 &
      pid=$!
      for _ in $(seq 1 600); do curl -sf "127.0.0.1:$port/health" >/dev/null 2>&1 && break; sleep 0.1; done
      python3 bench/serve_load.py --url "http://127.0.0.1:$port" --clients $clients --tokens 50 --seconds "$secs" --json "$out/load-$tag-$r.json" > "$out/load-$tag-$r.md" 2>&1 || tail -3 "$out/load-$tag-$r.md"
      curl -s "127.0.0.1:$port/health" > "$out/health-$tag-$r.json"
      kill -TERM $pid; wait $pid
    done
  done
fi
python3 - "$out" <<'PY'
import json, glob, os, sys, statistics
out = sys.argv[1]
def dyn(path):
    rows = json.load(open(path))["results"]
    return {r["clients"]: r["requests_per_s"] for r in rows if r.get("kind") == "dynamic"}
lines = ["## story mlp, dynamic rows: cuda:all / cuda:0 (same binary, same run; median over repeats)", "", "| clients | cuda:0 req/s | cuda:all req/s | ratio |", "| ---: | ---: | ---: | ---: |"]
a = [dyn(p) for p in sorted(glob.glob(f"{out}/story-mlp-cuda-0-*.json"))]
b = [dyn(p) for p in sorted(glob.glob(f"{out}/story-mlp-cuda-all-*.json"))]
if a and b:
    for c in sorted(a[0]):
        x = statistics.median(d[c] for d in a if c in d); y = statistics.median(d[c] for d in b if c in d)
        lines.append(f"| {c} | {x:,.0f} | {y:,.0f} | {y / x:.3f} |")
def load(path):
    try:
        return {r["clients"]: r for r in json.load(open(path))["rows"]}
    except Exception:
        return {}
a = [load(p) for p in sorted(glob.glob(f"{out}/load-cpu-[0-9]*.json"))]
b = [load(p) for p in sorted(glob.glob(f"{out}/load-cpu-0-1-*.json"))]
if a and b and a[0]:
    lines += ["", "## braid serve: --device cpu:0,1 / --device cpu (median over repeats)", "", "| clients | cpu req/s | cpu:0,1 req/s | ratio |", "| ---: | ---: | ---: | ---: |"]
    for c in sorted(a[0]):
        x = statistics.median(d[c]["req_s"] for d in a if c in d); y = statistics.median(d[c]["req_s"] for d in b if c in d)
        lines.append(f"| {c} | {x:,.1f} | {y:,.1f} | {y / x:.3f} |")
open(f"{out}/multi-summary.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY

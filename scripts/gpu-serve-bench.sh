#!/usr/bin/env bash
# `braid serve` under load on a GPU machine, next to the in-process
# dynamic-batching row of `braid bench story --workload minilm` from the
# same run (issue #11's measurement):
#   1. braid bench story --workload minilm --json OUTDIR/story-minilm.json
#      (its "dynamic batching" table: clients 1..256 calling the Batcher in
#      process, one text each; max batch 256, delay 1 ms);
#   2. braid serve on 127.0.0.1 with the same batcher settings (one worker,
#      max batch 256, 1 ms), then bench/serve_load.py: one-text POST /embed
#      requests from 1..256 keep-alive clients, texts of ~50 and ~500 tokens
#      (the server cuts 500 to the model's 256), and the OpenAI route at ~50;
#   3. OUTDIR/serve-summary.md: both tables and the HTTP cost at 64 clients
#      (serve req/s at ~50 tokens / in-process req/s).
#
#   scripts/gpu-serve-bench.sh OUTDIR
#
# Needs a prebuilt braid (BRAID, default .bin/braid; no cargo here), python3
# (standard library only) and models/all-MiniLM-L6-v2 (MODEL overrides it:
# MODEL=crates/nn/tests/fixtures/bert_mean, a 2-layer BERT of width 32,
# makes the forward nearly free so the host path is what is measured).
# The load comes from oha when OHA (default .bin/oha) is an executable
# (`cargo install oha --locked`; carry its stripped binary), else from
# Python clients; either way each row has the server's CPU time per
# request. BRAID_BEFORE=path runs step 2 with that binary too, in the same
# run, for a before/after table. SECONDS_PER_STEP
# (default 10) and CLIENTS (default "1 4 16 64 256") override the load;
# DEVICE (default cuda) and STORY_ARGS (e.g. --quick) are for a CPU smoke
# run (DEVICE=cpu SECONDS_PER_STEP=2 CLIENTS="1 4 16 64" STORY_ARGS=--quick).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu-serve-bench.sh OUTDIR}
braid=${BRAID:-.bin/braid}
secs=${SECONDS_PER_STEP:-10}
clients=${CLIENTS:-1 4 16 64 256}
model=${MODEL:-models/all-MiniLM-L6-v2}
device=${DEVICE:-cuda}
oha=${OHA:-.bin/oha}
loadgen=()
if [ -x "$oha" ]; then loadgen=(--oha "$oha"); echo "load generator: oha ($oha)"; else echo "load generator: Python (no oha at $oha)"; fi
mkdir -p "$out"
[ -x "$braid" ] || { echo "no braid binary at $braid (set BRAID=...)"; exit 1; }
[ -f $model/model.safetensors ] || { echo "no model at $model (scripts/get-minilm.sh)"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/gpu.txt" 2>&1 || true
"$braid" info > "$out/braid-info.txt" 2>&1 || true

echo "== 1. in-process: braid bench story --workload minilm"
"$braid" bench story --device "$device" --workload minilm --model $model ${STORY_ARGS:-} --json "$out/story-minilm.json" > "$out/story-minilm.md" 2>"$out/story-minilm.err"
echo "story exit $?"

echo "== 2. braid serve + bench/serve_load.py"
# serve_step BINARY SUFFIX: one server, the ~50/~500-token /embed table and
# the OpenAI row, into serve-load-{embed,openai}SUFFIX.json.
serve_step() {
  local bin=$1 sfx=$2 log="$out/serve$2.log" pid port url
  "$bin" serve --device "$device" --model $model --host 127.0.0.1 --port 0 --max-batch 256 --max-delay-ms 1 --workers 1 \
    --capacity 65536 --log-requests false > /dev/null 2> "$log" &
  pid=$!
  port=
  for _ in $(seq 1 600); do
    port=$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$log" | head -1 | sed 's/.*://')
    [ -n "$port" ] && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.2
  done
  if [ -z "$port" ]; then echo "braid serve did not start:"; cat "$log"; kill $pid 2>/dev/null; return 1; fi
  url=http://127.0.0.1:$port
  if [ -n "${PERF:-}" ] && command -v perf >/dev/null; then
    # A profile of the server during the whole ~50-token /embed table.
    perf record -F 499 -g -p $pid -o "$out/perf$sfx.data" -- sleep $(( secs * $(echo $clients | wc -w) + 5 )) > /dev/null 2>&1 &
  fi
  python3 bench/serve_load.py --url $url --clients $clients --tokens 50 500 --seconds "$secs" --pid $pid "${loadgen[@]}" --json "$out/serve-load-embed$sfx.json" | tee "$out/serve-load-embed$sfx.md"
  python3 bench/serve_load.py --url $url --clients $clients --tokens 50 --seconds "$secs" --openai --pid $pid "${loadgen[@]}" --json "$out/serve-load-openai$sfx.json" | tee "$out/serve-load-openai$sfx.md"
  curl -s $url/metrics > "$out/serve-metrics$sfx.txt" 2>/dev/null || python3 -c "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('$url/metrics').read().decode())" > "$out/serve-metrics$sfx.txt"
  kill -TERM $pid; wait $pid; echo "serve exit $?"
  if [ -f "$out/perf$sfx.data" ]; then
    wait
    perf report -i "$out/perf$sfx.data" --no-children --sort comm,dso,sym --stdio -g none 2>/dev/null | head -150 > "$out/perf$sfx.txt"
    rm -f "$out/perf$sfx.data"
  fi
}
serve_step "$braid" ""
if [ -n "${BRAID_BEFORE:-}" ]; then
  echo "== 2b. the same with the before binary $BRAID_BEFORE"
  serve_step "$BRAID_BEFORE" "-before"
fi

echo "== 3. summary"
python3 - "$out" <<'PY'
import json, sys, os
out = sys.argv[1]
cpu = lambda r: f"{r['server_cpu_us_per_req']:.0f}" if r and "server_cpu_us_per_req" in r else "-"
story = json.load(open(os.path.join(out, "story-minilm.json")))
def find_dyn(o):
    if isinstance(o, dict):
        if "requests_per_s" in o and "clients" in o:
            return [o]
        return [r for v in o.values() for r in find_dyn(v)]
    if isinstance(o, list):
        return [r for v in o for r in find_dyn(v)]
    return []
dyn = {r["clients"]: r for r in find_dyn(story)}
serve = json.load(open(os.path.join(out, "serve-load-embed.json")))["rows"]
before_path = os.path.join(out, "serve-load-embed-before.json")
before = json.load(open(before_path))["rows"] if os.path.exists(before_path) else []
oa = json.load(open(os.path.join(out, "serve-load-openai.json")))["rows"]
lines = ["# braid serve vs in-process dynamic batching (same run, same GPU)", "",
         "| clients | in-process req/s | in-process p50 ms | in-process p99 ms | serve ~50-tok req/s | tokens/s | p50 ms | p99 ms | serve/in-process | serve ~500-tok req/s | tokens/s | p50 ms | p99 ms | OpenAI ~50-tok req/s |",
         "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
for c in sorted({r["clients"] for r in serve}):
    s50 = next((r for r in serve if r["clients"] == c and r["target_tokens"] == 50), None)
    s500 = next((r for r in serve if r["clients"] == c and r["target_tokens"] == 500), None)
    o50 = next((r for r in oa if r["clients"] == c), None)
    d = dyn.get(c)
    f = lambda r, k, fmt="{:.0f}": fmt.format(r[k]) if r else "-"
    ratio = f"{s50['req_s'] / d['requests_per_s']:.2f}" if (s50 and d) else "-"
    lines.append(f"| {c} | {f(d,'requests_per_s')} | {f(d,'p50_ms','{:.2f}')} | {f(d,'p99_ms','{:.2f}')} | {f(s50,'req_s')} | {f(s50,'tokens_s')} | {f(s50,'p50_ms','{:.2f}')} | {f(s50,'p99_ms','{:.2f}')} | {ratio} | {f(s500,'req_s')} | {f(s500,'tokens_s')} | {f(s500,'p50_ms','{:.2f}')} | {f(s500,'p99_ms','{:.2f}')} | {f(o50,'req_s')} |")
s64, d64 = next((r for r in serve if r["clients"] == 64 and r["target_tokens"] == 50), None), dyn.get(64)
if s64 and d64:
    lines += ["", f"HTTP cost at 64 clients (~50-token texts vs the in-process sample texts): serve reaches {s64['req_s'] / d64['requests_per_s']:.1%} of the in-process req/s, a cost of {1 - s64['req_s'] / d64['requests_per_s']:.1%} (target: under 20%)."]
lines += ["", f"Load generator: {serve[0].get('client', 'python')}. Server CPU per request (us, user+system of the braid process over the step) at ~50 tokens: " + ", ".join(f"{r['clients']} clients {cpu(r)}" for r in serve if r["target_tokens"] == 50)]
if before:
    lines += ["", "## Before/after (same run, same machine, ~50-token /embed)", "",
              "| clients | before req/s | after req/s | after/before | before p50 ms | after p50 ms | before CPU us/req | after CPU us/req | before mean batch | after mean batch |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in sorted({r["clients"] for r in serve}):
        a = next((r for r in serve if r["clients"] == c and r["target_tokens"] == 50), None)
        b = next((r for r in before if r["clients"] == c and r["target_tokens"] == 50), None)
        if a and b:
            lines.append(f"| {c} | {b['req_s']:.0f} | {a['req_s']:.0f} | {a['req_s'] / b['req_s']:.2f} | {b['p50_ms']:.2f} | {a['p50_ms']:.2f} | {cpu(b)} | {cpu(a)} | {b['mean_batch']:.1f} | {a['mean_batch']:.1f} |")
open(os.path.join(out, "serve-summary.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY

#!/usr/bin/env bash
# Issue 18's whole two-GPU run, from one prebuilt binary, in one call (about
# 4 minutes on two H100s; every step is bounded, the whole well under 9):
#   1. `braid bench story --workload mlp --quick` dynamic rows on ONE (cuda:0),
#      then on ALL (cuda:all: a replica per GPU behind one batcher);
#   2. `braid serve` (MiniLM, f32: braid serves no bf16 yet) under HTTP load,
#      one-text requests, CLIENTS (1 16 64 256) clients, on ONE then on ALL;
#      on ONE also a steady DRILL_CLIENTS-client run of scripts/drill-load.py
#      (the one-GPU figure the failover is compared with, same tool);
#   3. the failover: `braid serve` on ALL with BRAID_INJECT_FAULT=FAULT_DEVICE@FAULT_AT
#      (cuda:1 fails FAULT_AT after serving starts, as after a sticky CUDA
#      error) under DRILL_CLIENTS clients for DRILL_SECONDS: throughput per
#      second, lost requests (must be 0), /health showing FAULT_DEVICE out;
#   4. OUTDIR/summary.md: every ratio ALL/ONE, and the failover verdict.
#
#   scripts/gpu-multi.sh OUTDIR
#   DEVICE_PAIR=cpu:0,1 scripts/gpu-multi.sh OUTDIR    # dry run on the CPU
#
# Needs BRAID (default .bin/braid; no cargo), python3, models/all-MiniLM-L6-v2
# (MODEL). Knobs: DEVICE_PAIR (sets ONE=first device, ALL=the pair,
# FAULT_DEVICE=second device; default cuda:0 / cuda:all / cuda:1), CLIENTS,
# SECONDS_PER_STEP (5), DRILL_CLIENTS (64), DRILL_SECONDS (30), FAULT_AT (10s),
# SERVE_ARGS, and LOAD: the load generator for step 2, a command taking
# bench/serve_load.py's arguments (--url --clients --tokens --seconds --json)
# and writing its JSON ({"rows": [{clients, req_s, p50_ms, p99_ms, mean_batch,
# errors}]}); default `python3 bench/serve_load.py`.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu-multi.sh OUTDIR}
braid=${BRAID:-.bin/braid}
model=${MODEL:-models/all-MiniLM-L6-v2}
secs=${SECONDS_PER_STEP:-5}
clients=${CLIENTS:-1 16 64 256}
load=${LOAD:-python3 bench/serve_load.py}
drill_clients=${DRILL_CLIENTS:-64}
drill_secs=${DRILL_SECONDS:-30}
fault_at=${FAULT_AT:-10s}
serve_args=${SERVE_ARGS:---workers 2 --max-batch 256 --max-delay-ms 1 --capacity 65536 --max-client-batch-size 256 --log-requests false}
if [ -n "${DEVICE_PAIR:-}" ]; then
  kind=${DEVICE_PAIR%%:*}; list=${DEVICE_PAIR#*:}
  one=$kind:${list%%,*}; all=$DEVICE_PAIR; fault_device=$kind:${list##*,}
else
  one=cuda:0; all=cuda:all; fault_device=cuda:1
fi
fault_device=${FAULT_DEVICE:-$fault_device}
[ -x "$braid" ] || { echo "gpu-multi: no braid binary at $braid (set BRAID)"; exit 2; }
[ -f "$model/model.safetensors" ] || { echo "gpu-multi: no model at $model (scripts/get-minilm.sh)"; exit 2; }
mkdir -p "$out"
unset BRAID_INJECT_FAULT
tag() { local t=${1//:/-}; echo "${t//,/-}"; }
t_start=$(date +%s)
{ date -u; "$braid" info 2>&1 | head -20; command -v nvidia-smi >/dev/null && nvidia-smi -L; nproc; echo "ONE=$one ALL=$all FAULT_DEVICE=$fault_device LOAD=$load"; } > "$out/machine.txt" 2>&1

# serve DEVICE LOG [ENV=VALUE]: start braid serve on an ephemeral port; sets
# $pid and $url (empty if it never listened within 180 s).
serve() {
  local dev=$1 log=$2; shift 2
  env "$@" "$braid" serve --device "$dev" --port 0 --model "$model" $serve_args > "$log" 2>&1 &
  pid=$!; url=
  for _ in $(seq 1 1800); do
    url=$(grep -o 'listening on http://[0-9.:]*' "$log" | head -1 | sed 's/listening on //')
    [ -n "$url" ] && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$url" ] || { echo "gpu-multi: serve on $dev did not start:"; tail -5 "$log"; kill $pid 2>/dev/null; wait $pid 2>/dev/null; }
}
stop() { kill -TERM $pid 2>/dev/null; for _ in $(seq 1 300); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done; kill -KILL $pid 2>/dev/null; wait $pid 2>/dev/null; }
health() { python3 -c 'import sys,urllib.request
try: print(urllib.request.urlopen(sys.argv[1] + "/health", timeout=10).read().decode())
except Exception as e: print(getattr(e, "read", lambda: str(e).encode())().decode())' "$1"; }

# 1. story mlp dynamic rows.
for d in "$one" "$all"; do
  t=$(tag "$d")
  echo "== $(date +%T) story mlp on $d"
  timeout 240 "$braid" bench story --device "$d" --workload mlp --quick --json "$out/story-mlp-$t.json" > "$out/story-mlp-$t.md" 2> "$out/story-mlp-$t.err" || { echo "story on $d failed:"; tail -3 "$out/story-mlp-$t.err"; }
done

# 2. serve under load, ONE then ALL; the drill baseline on ONE.
for d in "$one" "$all"; do
  t=$(tag "$d")
  echo "== $(date +%T) serve on $d under $load"
  serve "$d" "$out/serve-$t.log"
  [ -n "$url" ] || continue
  timeout 300 $load --url "$url" --clients $clients --tokens 50 --seconds "$secs" --json "$out/load-$t.json" > "$out/load-$t.md" 2>&1 || tail -3 "$out/load-$t.md"
  if [ "$d" = "$one" ]; then
    echo "== $(date +%T) drill baseline on $d: $drill_clients clients, no fault"
    timeout 300 python3 scripts/drill-load.py --url "$url" --clients "$drill_clients" --seconds 10 --json "$out/drill-baseline-$t.json" > "$out/drill-baseline-$t.txt" 2>&1 || tail -3 "$out/drill-baseline-$t.txt"
  fi
  health "$url" > "$out/health-$t.json"
  stop
done

# 3. the failover drill on ALL.
echo "== $(date +%T) failover: serve on $all, $fault_device fails at $fault_at, $drill_clients clients for $drill_secs s"
serve "$all" "$out/serve-drill.log" BRAID_INJECT_FAULT="$fault_device@$fault_at"
if [ -n "$url" ]; then
  timeout $((drill_secs + 300)) python3 scripts/drill-load.py --url "$url" --clients "$drill_clients" --seconds "$drill_secs" --json "$out/drill.json" > "$out/drill.txt" 2>&1 || tail -3 "$out/drill.txt"
  health "$url" > "$out/health-drill-after.json"
  stop
fi
echo "== $(date +%T) done in $(( $(date +%s) - t_start )) s"

# 4. summary.
python3 - "$out" "$one" "$all" "$fault_device" "$fault_at" "$(tag "$one")" "$(tag "$all")" <<'PY'
import json, os, sys
out, one, allx, fault_dev, fault_at, t1, ta = sys.argv[1:]
def js(name):
    try:
        return json.load(open(os.path.join(out, name)))
    except Exception:
        return None
L = [f"# Issue 18 run: {one} vs {allx}, failover of {fault_dev}", "", "Same binary, one call (`scripts/gpu-multi.sh`); machine in `machine.txt`.", ""]
a, b = js(f"story-mlp-{t1}.json"), js(f"story-mlp-{ta}.json")
if a and b:
    da = {r["clients"]: r for r in a["results"] if r.get("kind") == "dynamic"}
    db = {r["clients"]: r for r in b["results"] if r.get("kind") == "dynamic"}
    L += ["## story mlp --quick, dynamic rows", "", f"| clients | {one} req/s | {allx} req/s | ratio | {one} mean batch | {allx} mean batch |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in sorted(set(da) & set(db)):
        L.append(f"| {c} | {da[c]['requests_per_s']:,.0f} | {db[c]['requests_per_s']:,.0f} | {db[c]['requests_per_s'] / da[c]['requests_per_s']:.2f} | {da[c]['mean_batch']:.1f} | {db[c]['mean_batch']:.1f} |")
    L.append("")
else:
    L += ["## story mlp: missing (see story-*.err)", ""]
a, b = js(f"load-{t1}.json"), js(f"load-{ta}.json")
if a and b:
    ra = {r["clients"]: r for r in a["rows"]}
    rb = {r["clients"]: r for r in b["rows"]}
    L += ["## braid serve, one-text requests (~50 tokens), MiniLM f32", "", f"| clients | {one} req/s | {allx} req/s | ratio | {one} p50 ms | {allx} p50 ms | {one} mean batch | {allx} mean batch | errors |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in sorted(set(ra) & set(rb)):
        x, y = ra[c], rb[c]
        L.append(f"| {c} | {x['req_s']:,.0f} | {y['req_s']:,.0f} | {y['req_s'] / x['req_s']:.2f} | {x['p50_ms']:.2f} | {y['p50_ms']:.2f} | {x['mean_batch']:.1f} | {y['mean_batch']:.1f} | {x['errors'] + y['errors']} |")
    L.append("")
else:
    L += ["## braid serve: missing (see load-*.md, serve-*.log)", ""]
base, d = js(f"drill-baseline-{t1}.json"), js("drill.json")
if d:
    ps = d["per_second"]
    fo = d.get("first_health_with_a_device_out")
    tf = int(fo["t"]) if fo else None
    L += [f"## failover: {fault_dev} fails {fault_at} after `serve --device {allx}` starts, {d['clients']} clients, {d['seconds']:.0f} s", ""]
    L.append(f"- requests answered: {d['answered']}; **lost: {d['lost']}**" + (f" (first: {d['lost_examples'][:3]})" if d["lost"] else ""))
    if fo:
        outs = [x for x in fo["health"].get("devices", []) if x.get("serving") is False]
        L.append(f"- `/health` (status {fo['status']}) shows {', '.join(x['device'] for x in outs)} out at t = {fo['t']:.1f} s, reason: {outs[0].get('reason') if outs else '?'} (`drill.json`, `health-drill-after.json`)")
    else:
        L.append("- `/health` never showed a device out during the run")
    L.append(f"- requests per second: {ps}")
    if tf is not None and tf >= 3 and len(ps) - tf >= 6:
        before = ps[1:tf - 1]
        after = ps[len(ps) - (len(ps) - tf) // 2:-1] or ps[tf + 2:]
        mb, ma = sum(before) / len(before), sum(after) / len(after)
        L.append(f"- before the fault (s 1..{tf - 1}): {mb:,.0f} req/s; settled after it (last {len(after)} full seconds): {ma:,.0f} req/s; after/before {ma / mb:.2f}")
        if base:
            bs = base["per_second"][1:-1]
            mo = sum(bs) / len(bs)
            verdict = "settles at the one-device figure" if 0.85 <= ma / mo <= 1.15 else ("below the one-device figure" if ma < mo else "above the one-device figure")
            L.append(f"- one-device figure (same tool and clients on `{one}`, `drill-baseline-{t1}.json`): {mo:,.0f} req/s; settled / one-device = **{ma / mo:.2f}** ({verdict}; within ±15% counts as settled)")
    else:
        L.append("- the fault came too early or too late in the run to compare before and after")
else:
    L += ["## failover: missing (see drill.txt, serve-drill.log)"]
text = "\n".join(L) + "\n"
open(os.path.join(out, "summary.md"), "w").write(text)
print(text)
PY

#!/usr/bin/env bash
# Issue 13's batching policy, measured: the eager policy (the default: a free
# worker starts at once with what is queued, requests gather only while every
# worker is busy) against the original wait policy (gather until the batch is
# full or the delay has passed), and `follow` (eager, but a free worker waits,
# at most the delay, until as many requests are queued as the last batch
# held), same binary, same run, alternating (POLICIES, wait first: the ratios
# are against it):
#   1. `braid bench story --workload W --quick` dynamic rows (in-process
#      clients sending single samples), BRAID_BATCH_POLICY=wait then eager,
#      for each W in WORKLOADS;
#   2. `braid serve --batch-policy wait`, then `eager`, under LOAD (one-text
#      requests of ~50 tokens, CLIENTS clients, SECONDS_PER_STEP each);
#   3. one client against all the servers at once, requests interleaved
#      (scripts/ab-latency.py): latency, and the server's own mean queue wait
#      (what the policy decides) and forward time.
# Writes OUTDIR/policy-summary.md (ratios of req/s and p50 against wait).
#
#   scripts/batch-policy.sh OUTDIR                              # CPU
#   DEVICE=cuda:0 WORKLOADS="mlp minilm" scripts/batch-policy.sh OUTDIR   # one GPU
#
# Needs BRAID (default .bin/braid; no cargo), python3, and for step 2 and the
# minilm workload models/all-MiniLM-L6-v2. Knobs: DEVICE (cpu), WORKLOADS
# (mlp encoder), CLIENTS (1 4 16 64 256), SECONDS_PER_STEP (5), REPEATS (1),
# SERVE_ARGS, LOAD (default `python3 bench/serve_load.py`, or any command
# taking its arguments and writing its JSON).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/batch-policy.sh OUTDIR}
braid=${BRAID:-.bin/braid}
device=${DEVICE:-cpu}
workloads=${WORKLOADS:-mlp encoder}
clients=${CLIENTS:-1 4 16 64 256}
secs=${SECONDS_PER_STEP:-5}
repeats=${REPEATS:-1}
load=${LOAD:-python3 bench/serve_load.py}
policies=${POLICIES:-wait eager follow}
model=${MODEL:-models/all-MiniLM-L6-v2}
serve_args=${SERVE_ARGS:---workers 2 --max-batch 256 --max-delay-ms 2 --capacity 65536 --log-requests false}
[ -x "$braid" ] || { echo "batch-policy: no braid binary at $braid (set BRAID)"; exit 2; }
mkdir -p "$out"
unset BRAID_INJECT_FAULT
{ date -u; "$braid" info 2>&1 | head -20; nproc; echo "DEVICE=$device LOAD=$load SERVE_ARGS=$serve_args"; } > "$out/machine.txt" 2>&1
t_start=$(date +%s)
for r in $(seq 1 "$repeats"); do
  for w in $workloads; do
    for p in $policies; do
      echo "== $(date +%T) story $w on $device, policy $p (repeat $r)"
      BRAID_BATCH_POLICY=$p timeout 600 "$braid" bench story --device "$device" --workload "$w" --model "$model" --quick --json "$out/story-$w-$p-$r.json" > "$out/story-$w-$p-$r.md" 2> "$out/story-$w-$p-$r.err" || { echo "story failed:"; tail -3 "$out/story-$w-$p-$r.err"; }
    done
  done
done
if [ -f "$model/model.safetensors" ]; then
  for r in $(seq 1 "$repeats"); do
    for p in $policies; do
      log="$out/serve-$p-$r.log"
      "$braid" serve --device "$device" --port 0 --model "$model" --batch-policy "$p" $serve_args > "$log" 2>&1 &
      pid=$!; url=
      for _ in $(seq 1 1800); do
        url=$(grep -o 'listening on http://[0-9.:]*' "$log" | head -1 | sed 's/listening on //')
        [ -n "$url" ] && break
        kill -0 $pid 2>/dev/null || break
        sleep 0.1
      done
      if [ -z "$url" ]; then echo "serve did not start:"; tail -5 "$log"; continue; fi
      echo "== $(date +%T) serve on $device, --batch-policy $p (repeat $r), $url"
      timeout 600 $load --url "$url" --clients $clients --tokens 50 --seconds "$secs" --json "$out/load-$p-$r.json" > "$out/load-$p-$r.md" 2>&1 || tail -3 "$out/load-$p-$r.md"
      kill -TERM $pid; for _ in $(seq 1 300); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done; kill -KILL $pid 2>/dev/null; wait $pid 2>/dev/null
    done
  done
  # 3. One client, both servers up at once, requests interleaved A B A B:
  # the same machine conditions for both (robust to drift and to other load).
  pids=; urls=
  for p in $policies; do
    "$braid" serve --device "$device" --port 0 --model "$model" --batch-policy "$p" $serve_args > "$out/serve-ab-$p.log" 2>&1 &
    pids="$pids $!"
  done
  for p in $policies; do
    u=
    for _ in $(seq 1 1800); do
      u=$(grep -o 'listening on http://[0-9.:]*' "$out/serve-ab-$p.log" | head -1 | sed 's/listening on //')
      [ -n "$u" ] && break
      sleep 0.1
    done
    urls="$urls --url $p=$u"
  done
  echo "== $(date +%T) one client, interleaved:$urls"
  timeout 300 python3 scripts/ab-latency.py $urls --requests "${AB_REQUESTS:-400}" --seconds 240 --json "$out/ab-1-client.json" | tee "$out/ab-1-client.txt"
  kill -TERM $pids; wait $pids 2>/dev/null
else
  echo "batch-policy: no model at $model: serve step SKIPPED (scripts/get-minilm.sh)"
fi
echo "== $(date +%T) done in $(( $(date +%s) - t_start )) s"
python3 - "$out" "$device" "$workloads" "$policies" <<'PY'
import glob, json, os, statistics, sys
out, device, workloads, policies = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split()
base = policies[0]
def med(xs):
    return statistics.median(xs) if xs else float("nan")
L = [f"# Batch policy: {', '.join(policies)} on {device}", "", f"Same binary, same run (`scripts/batch-policy.sh`), policies alternated; medians over repeats; ratios against {base}; machine in `machine.txt`.", ""]
def table(title, runs, rate, p50, batch):
    L.extend([title, "", "| clients | " + " | ".join(f"{p} req/s" for p in policies) + " | " + " | ".join(f"{p}/{base}" for p in policies[1:]) + " | " + " | ".join(f"{p} p50 ms" for p in policies) + " | " + " | ".join(f"{p} mean batch" for p in policies) + " |",
              "| ---: " * (1 + 3 * len(policies) + len(policies) - 1) + "|"])
    for c in sorted(runs[base][0]):
        g = lambda p, k: med([d[c][k] for d in runs[p] if c in d])
        L.append(f"| {c} | " + " | ".join(f"{g(p, rate):,.0f}" for p in policies) + " | " + " | ".join(f"{g(p, rate) / g(base, rate):.2f}" for p in policies[1:]) + " | " + " | ".join(f"{g(p, p50):.3f}" for p in policies) + " | " + " | ".join(f"{g(p, batch):.1f}" for p in policies) + " |")
    L.append("")
for w in workloads:
    runs = {p: [{r["clients"]: r for r in json.load(open(f))["results"] if r.get("kind") == "dynamic"} for f in sorted(glob.glob(f"{out}/story-{w}-{p}-*.json"))] for p in policies}
    if all(runs.values()):
        table(f"## bench story --workload {w} --quick, dynamic rows", runs, "requests_per_s", "p50_ms", "mean_batch")
    else:
        L += [f"## story {w}: missing (see story-{w}-*.err)", ""]
runs = {p: [{r["clients"]: r for r in json.load(open(f))["rows"]} for f in sorted(glob.glob(f"{out}/load-{p}-*.json"))] for p in policies}
if all(runs.values()):
    table("## braid serve, one-text requests (~50 tokens)", runs, "req_s", "p50_ms", "mean_batch")
    L.append(f"errors: {sum(d[c]['errors'] for p in runs for d in runs[p] for c in d)}")
try:
    ab = json.load(open(f"{out}/ab-1-client.json"))
    L += ["", "## braid serve, one client, requests interleaved between the servers (scripts/ab-latency.py)", "",
          "| policy | requests | p50 ms | p90 ms | p99 ms | server mean queue wait ms | server mean forward ms |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in policies:
        r = ab[p]
        L.append(f"| {p} | {r['requests']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['server_mean_queue_wait_ms']:.3f} | {r['server_mean_compute_ms']:.3f} |")
    L.append(f"\nerrors: {ab['errors']}")
except (OSError, KeyError, ValueError):
    L += ["", "(one-client interleaved run: missing)"]
text = "\n".join(L) + "\n"
open(f"{out}/policy-summary.md", "w").write(text)
print(text)
PY

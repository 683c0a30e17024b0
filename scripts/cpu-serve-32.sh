#!/usr/bin/env bash
# Latency of one 32-text POST /embed on `braid serve --device cpu`: starts the
# server on loopback, waits for /health (at most 120 s), sends 3 warm-up and
# 20 timed requests of 32 distinct sentences one after the other over a real
# keep-alive HTTP connection, prints p50/p90/max, and stops the server.
#
#   scripts/cpu-serve-32.sh [OUTFILE]      (BRAID=path/to/braid, PORT=18089)
#
# WORDS=N makes every text N words long instead of 8-24 (WORDS=100 gives
# about 128 tokens a text, the story's MiniLM rows).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${BRAID:-}" ]; then braid=$BRAID; elif [ -x .bin/braid ]; then braid=.bin/braid; else braid=target/release/braid; fi
port=${PORT:-18089}
out=${1:-/dev/stdout}
"$braid" serve --device cpu --host 127.0.0.1 --port "$port" > /tmp/braid-serve-32.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
python3 - "$port" "${WORDS:-0}" > "$out" <<'PY'
import http.client, json, sys, time
port = int(sys.argv[1])
fixed = int(sys.argv[2])
deadline = time.time() + 120
while True:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/health")
        if c.getresponse().status == 200:
            break
    except OSError:
        pass
    if time.time() > deadline:
        sys.exit("server did not become healthy in 120 s")
    time.sleep(0.5)
words = "the a quick brown fox jumps over lazy dog braid serves sentence embeddings from many threads on one device with dynamic batching and streams".split()
texts = [" ".join(words[(i * 7 + j) % len(words)] for j in range(fixed or 8 + i % 17)) + "." for i in range(32)]
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
lat = []
for n in range(23):
    body = json.dumps({"inputs": texts})
    t = time.perf_counter()
    c.request("POST", "/embed", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    dt = time.perf_counter() - t
    if r.status != 200:
        sys.exit(f"HTTP {r.status}: {data[:200]!r}")
    emb = json.loads(data)
    assert len(emb) == 32 and len(emb[0]) == 384, "unexpected response shape"
    if n >= 3:
        lat.append(dt * 1e3)
lat.sort()
print(f"32-text POST /embed on braid serve --device cpu: p50 {lat[len(lat)//2]:.1f} ms, p90 {lat[int(len(lat)*0.9)]:.1f} ms, max {lat[-1]:.1f} ms ({len(lat)} requests, {max(len(t.split()) for t in texts)} words longest)")
PY

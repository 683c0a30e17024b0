#!/usr/bin/env bash
# The long `braid serve` soak (issue 16 item 7): start `braid serve` on
# loopback, drive it with 8 keep-alive clients (1-8 texts of 1-400 words, a
# few deliberately bad requests) for SECONDS, sample host RSS and (on CUDA)
# device memory, and fail if an accepted request failed or RSS after the
# warm-up grows more than 15%. Writes target/serve-soak/{memory.csv,
# memory.svg,serve.log}. Not part of CI (it runs for minutes).
#
#   scripts/serve-soak.sh                       # 3 minutes on the CPU
#   SECONDS_TOTAL=3600 WARMUP=300 DEVICE=cuda scripts/serve-soak.sh   # the H100 hour
#
# Settings (environment): SECONDS_TOTAL (180), WARMUP (60), CLIENTS (8),
# DEVICE (cpu), PORT (18080), BRAID (target/release/braid; built if absent),
# plus any `braid serve` option after `--`, e.g. `-- --max-cache-bytes 2G`.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TOTAL=${SECONDS_TOTAL:-180}
WARMUP=${WARMUP:-60}
CLIENTS=${CLIENTS:-8}
DEVICE=${DEVICE:-cpu}
PORT=${PORT:-18080}
BRAID=${BRAID:-target/release/braid}
OUT=${OUT:-target/serve-soak}
[ "${1:-}" = "--" ] && shift
if [ ! -x "$BRAID" ]; then
  cargo build --release -p braid
fi
if [ ! -f models/all-MiniLM-L6-v2/model.safetensors ]; then
  bash scripts/get-minilm.sh
fi
mkdir -p "$OUT"
"$BRAID" serve --device "$DEVICE" --host 127.0.0.1 --port "$PORT" "$@" >"$OUT/serve.log" 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  grep -q "listening on" "$OUT/serve.log" && break
  kill -0 $PID 2>/dev/null || { cat "$OUT/serve.log"; exit 1; }
  sleep 0.2
done
grep -q "listening on" "$OUT/serve.log" || { echo "braid serve did not start"; cat "$OUT/serve.log"; exit 1; }
echo "== braid serve (pid $PID) on 127.0.0.1:$PORT, device $DEVICE; ${SECONDS_TOTAL} s, warm-up ${WARMUP} s, $CLIENTS clients"
rc=0
python3 scripts/serve-soak.py --pid $PID --port "$PORT" --seconds "$SECONDS_TOTAL" --warmup "$WARMUP" --clients "$CLIENTS" --out "$OUT" || rc=$?
kill -TERM $PID
for _ in $(seq 1 200); do kill -0 $PID 2>/dev/null || break; sleep 0.2; done
trap - EXIT
echo "== server log (tail)"
tail -5 "$OUT/serve.log"
exit $rc

#!/usr/bin/env bash
# The long `braid serve` soak (issue 16 item 7): start `braid serve` on
# loopback, drive it with 8 keep-alive clients (1-8 texts of 1-400 words, a
# few deliberately bad requests) for SECONDS, sample host RSS and (on CUDA)
# device memory, and fail if an accepted request failed or RSS after the
# warm-up grows more than 15%. Writes into OUT (default target/serve-soak):
# memory.csv (samples), memory.png (matplotlib; where it is absent, as on
# the GPU machine, run `python3 scripts/serve-soak-plot.py OUT` afterwards
# where pip works), memory.svg, summary.md (duration, requests, errors by
# kind, host RSS and device memory at start and end) and serve.log. Not
# part of CI (it runs for minutes).
#
#   scripts/serve-soak.sh                       # 3 minutes on the CPU
#   SECONDS_TOTAL=480 WARMUP=60 DEVICE=cuda OUT=$OUT/soak scripts/serve-soak.sh   # the GPU run (.bin/braid, no cargo)
#   MODEL=crates/nn/tests/fixtures/bert_mean SECONDS_TOTAL=60 WARMUP=10 scripts/serve-soak.sh
#       # the tiny fixture: requests take microseconds, as on the H100
#
# Settings (environment): SECONDS_TOTAL (180), WARMUP (60), CLIENTS (8),
# DEVICE (cpu), PORT (18080), MODEL (models/all-MiniLM-L6-v2), OUT,
# BRAID (.bin/braid if present, else target/release/braid, built if absent),
# BRAID_LOG_REQUESTS (false: no line per request in serve.log), plus any
# `braid serve` option after `--`, e.g. `-- --max-cache-bytes 2G`.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TOTAL=${SECONDS_TOTAL:-180}
WARMUP=${WARMUP:-60}
CLIENTS=${CLIENTS:-8}
DEVICE=${DEVICE:-cpu}
PORT=${PORT:-18080}
MODEL=${MODEL:-models/all-MiniLM-L6-v2}
if [ -z "${BRAID:-}" ]; then
  if [ -x .bin/braid ]; then BRAID=.bin/braid; else BRAID=target/release/braid; fi
fi
OUT=${OUT:-target/serve-soak}
[ "${1:-}" = "--" ] && shift
if [ ! -x "$BRAID" ]; then
  cargo build --release -p braid
fi
if [ ! -f "$MODEL/model.safetensors" ]; then
  [ "$MODEL" = models/all-MiniLM-L6-v2 ] || { echo "no model at $MODEL"; exit 1; }
  bash scripts/get-minilm.sh
fi
mkdir -p "$OUT"
BRAID_LOG_REQUESTS=${BRAID_LOG_REQUESTS:-false} "$BRAID" serve --device "$DEVICE" --model "$MODEL" --host 127.0.0.1 --port "$PORT" "$@" >"$OUT/serve.log" 2>&1 &
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
python3 scripts/serve-soak.py --pid $PID --port "$PORT" --seconds "$SECONDS_TOTAL" --warmup "$WARMUP" --clients "$CLIENTS" --out "$OUT" \
  --label "$BRAID serve --device $DEVICE --model $MODEL $*, $(date -u +%Y-%m-%dT%H:%MZ), $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)" || rc=$?
kill -TERM $PID
for _ in $(seq 1 200); do kill -0 $PID 2>/dev/null || break; sleep 0.2; done
trap - EXIT
echo "== server log (tail)"
tail -5 "$OUT/serve.log"
exit $rc

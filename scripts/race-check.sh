#!/usr/bin/env bash
# Data-race checks of the runtime's stress tests (CPU streams, 64 threads on 8
# slots, thread churn, round-robin, exhaustion), two ways:
#   1. valgrind --tool=helgrind (Debian `valgrind`), cycles scaled to 2%;
#   2. ThreadSanitizer (the stable toolchain's tsan runtime, RUSTC_BOOTSTRAP=1).
# Writes logs to ${OUT:-target/race-check}/ and prints a summary. Exit status
# is that of the stress tests themselves (they must pass under both tools);
# the race reports are counted and classified, see docs/VERIFICATION.md for
# why the raw counts are dominated by std-internal reports.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-target/race-check}
mkdir -p "$out"
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
rc=0

cargo test -q -p braid-runtime --test stress --no-run 2>/dev/null
bin=$(ls -t target/debug/deps/stress-* | grep -v '\.d$' | head -1)
echo "== helgrind over $bin (BRAID_STRESS_SCALE_PCT=2)"
BRAID_STRESS_SCALE_PCT=2 valgrind --tool=helgrind "$bin" --test-threads 1 >"$out/helgrind.log" 2>&1 || rc=$?
grep -E "^test result" "$out/helgrind.log" || { echo "stress tests did not finish under helgrind"; rc=1; }
total=$(grep -c "Possible data race" "$out/helgrind.log")
# A report is attributed to braid when no frame of its stack is in std's own
# synchronisation (futex mutex/condvar, mpmc channels, thread start/exit,
# Arc), which helgrind cannot see because it only models pthread primitives.
braid_only=$(awk '/Possible data race/{inrep=1; std=0; braid=0; next} inrep && /^==[0-9]+== *$/{ if(braid && !std) n++; inrep=0 } inrep && /(std::sync|std::sys|std::thread|stack_overflow|alloc::sync::Arc|mpmc|futex|Barrier)/{std=1} inrep && /braid_runtime/{braid=1} END{print n+0}' "$out/helgrind.log")
echo "helgrind: $total possible-race reports; $braid_only with braid frames and no std-sync frame"

echo "== ThreadSanitizer over the stress tests (full cycle counts)"
RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=thread -Cunsafe-allow-abi-mismatch=sanitizer" CARGO_TARGET_DIR=target/tsan \
  cargo test -p braid-runtime --test stress --target x86_64-unknown-linux-gnu >"$out/tsan.log" 2>&1
grep -E "^test result" "$out/tsan.log" || { echo "stress tests did not finish under tsan"; rc=1; }
tw=$(grep -c "^SUMMARY: ThreadSanitizer" "$out/tsan.log")
tb=$(grep "^SUMMARY: ThreadSanitizer" "$out/tsan.log" | grep -c "braid_runtime" || true)
echo "tsan: $tw warnings; $tb with the racing access in braid_runtime code"
grep "^SUMMARY: ThreadSanitizer" "$out/tsan.log" | sed 's/.*data race //' | sort | uniq -c | sort -rn | head -12
exit $rc

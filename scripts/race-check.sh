#!/usr/bin/env bash
# Data-race checks of braid's concurrency tests on CPU streams (executor
# threads): the runtime's stress, allocator and device tests and the batch
# queue and batcher tests.
#
#   1. ThreadSanitizer with an instrumented std (-Zbuild-std). The pass/fail
#      check: every test must pass and TSan must report nothing. A std built
#      without instrumentation hides its own synchronisation (futex mutexes,
#      Arc's fences) from TSan and floods the log with false reports, so std
#      is rebuilt from source with the sanitizer. rustup's toolchain here has
#      no rust-src component, so this uses Debian's rustc-web 1.85 with its
#      matching rust-web-src (RUSTC_BOOTSTRAP=1 for the -Z flags), the TSan
#      runtime taken from the rustup toolchain, and the CPU-only build
#      (`--no-default-features`: cudarc needs a newer rustc; the CUDA side
#      is checked by compute-sanitizer, scripts/gpu-check-cuda.sh). First a
#      canary with a deliberate race must be reported, so a clean run means
#      something.
#   2. valgrind --tool=helgrind over the stress tests (cycles at 2%),
#      informational only: helgrind models pthread primitives and cannot see
#      std's futex-based locks or its atomics, so it reports races inside
#      std; the script counts the reports whose stack has braid frames and no
#      std-synchronisation frame (see docs/VERIFICATION.md).
#
# Logs go to ${OUT:-target/race-check}/. Exit status 0 only when the canary
# is caught, every test passes under TSan with 0 reports, and the stress
# tests pass under helgrind. Needs root for apt-get and for placing the TSan
# runtime in Debian's rustc sysroot (first run only). About 5 minutes on 2
# cores from scratch.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-target/race-check}
mkdir -p "$out"
rc=0

need=()
command -v valgrind >/dev/null || need+=(valgrind)
[ -x /usr/bin/cargo ] && [ -x /usr/bin/rustc ] || need+=(rustc-web cargo-web)
[ -d /usr/lib/rustlib/src/rust/library ] || need+=(rust-web-src)
if [ ${#need[@]} -gt 0 ]; then
  echo "== [$(date -u +%H:%M:%S)] apt-get install ${need[*]}"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; } || { echo "could not install ${need[*]}"; exit 1; }
fi
sysroot_lib=/usr/lib/rustlib/x86_64-unknown-linux-gnu/lib
rt=$sysroot_lib/librustc-stable_rt.tsan.a
if [ ! -f "$rt" ]; then
  src=$(ls "$(rustc --print sysroot)"/lib/rustlib/x86_64-unknown-linux-gnu/lib/librustc-*_rt.tsan.a 2>/dev/null | head -1)
  [ -n "$src" ] || { echo "no TSan runtime in $(rustc --print sysroot)"; exit 1; }
  cp "$src" "$rt" || { echo "cannot place the TSan runtime at $rt"; exit 1; }
fi

# Line tables only (the dev profile's default is full debuginfo): TSan's
# reports still name file:line, and the instrumented std and dependencies
# build and link faster.
tsan() {
  CARGO_PROFILE_DEV_DEBUG=line-tables-only RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=thread" RUSTDOCFLAGS="-Zsanitizer=thread" CARGO_TARGET_DIR=target/tsan-std RUSTC=/usr/bin/rustc \
    TSAN_OPTIONS="halt_on_error=0 ${TSAN_OPTIONS:-}" /usr/bin/cargo "$@" -Zbuild-std --target x86_64-unknown-linux-gnu --ignore-rust-version
}

echo "== [$(date -u +%H:%M:%S)] ThreadSanitizer canary (a deliberate race must be reported)"
tsan run -q --manifest-path scripts/race-canary/Cargo.toml >"$out/tsan-canary.log" 2>&1
if grep -q "WARNING: ThreadSanitizer: data race" "$out/tsan-canary.log"; then
  echo "canary: race reported (TSan is live)"
else
  echo "canary: NOT reported; the TSan set-up is broken, see $out/tsan-canary.log"; exit 1
fi

echo "== [$(date -u +%H:%M:%S)] ThreadSanitizer, instrumented std: braid-runtime tests, braid-batch queue and batcher tests"
tsan test -p braid-runtime --no-default-features --tests >"$out/tsan.log" 2>&1 || { echo "tests failed under TSan"; rc=1; }
tsan test -p braid-batch --no-default-features --test queue --test batcher >>"$out/tsan.log" 2>&1 || { echo "batch tests failed under TSan"; rc=1; }
grep -E "^test result:" "$out/tsan.log" | sed 's/^/  /'
passed=$(grep -E "^test result:" "$out/tsan.log" | awk '{s+=$4} END{print s+0}')
tw=$(grep -c "^SUMMARY: ThreadSanitizer" "$out/tsan.log")
echo "tsan: $passed tests passed, $tw reports"
[ "$tw" -eq 0 ] || { rc=1; grep "^SUMMARY: ThreadSanitizer" "$out/tsan.log" | sort | uniq -c | sort -rn | head -12; }

cargo test -q -p braid-runtime --no-default-features --test stress --no-run 2>/dev/null
bin=$(ls -t target/debug/deps/stress-* | grep -v '\.d$' | head -1)
echo "== [$(date -u +%H:%M:%S)] helgrind over $bin (BRAID_STRESS_SCALE_PCT=2), informational"
BRAID_STRESS_SCALE_PCT=2 valgrind --tool=helgrind "$bin" --test-threads 1 >"$out/helgrind.log" 2>&1 || rc=$?
grep -E "^test result" "$out/helgrind.log" || { echo "stress tests did not finish under helgrind"; rc=1; }
total=$(grep -c "Possible data race" "$out/helgrind.log")
# A report is attributed to braid when no frame of its stack is in std's own
# synchronisation (futex mutex/condvar, mpmc channels, thread start/exit,
# Arc), which helgrind cannot see because it only models pthread primitives.
braid_only=$(awk '/Possible data race/{inrep=1; std=0; braid=0; next} inrep && /^==[0-9]+== *$/{ if(braid && !std) n++; inrep=0 } inrep && /(std::sync|std::sys|std::thread|stack_overflow|alloc::sync::Arc|mpmc|futex|Barrier)/{std=1} inrep && /braid_runtime/{braid=1} END{print n+0}' "$out/helgrind.log")
echo "helgrind: $total possible-race reports; $braid_only with braid frames and no std-sync frame"
[ $rc -eq 0 ] && echo "race-check: PASS" || echo "race-check: FAIL"
exit $rc

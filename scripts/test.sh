#!/usr/bin/env bash
# The whole test suite, as CI runs it (`.ci/run` calls this). On a fresh
# machine it installs what it needs: the MiniLM model (pip), then runs
#   1. every crate's tests (release build: the model and stress tests are
#      heavy in debug) -- GPU tests print SKIPPED lines where there is no GPU;
#      then the real HTTP client libraries against `braid serve`, the deploy
#      manifests, and a replica failover behind nginx;
#   1b. the HTTP client libraries (openai, huggingface_hub, langchain-openai,
#      prometheus_client; pip) against a real `braid serve` on loopback;
#   2. every loom model (`--cfg loom`, own target dir);
#   3. the data-race checks (scripts/race-check.sh: ThreadSanitizer with an
#      instrumented std over the concurrency tests, which must report
#      nothing; helgrind, informational). About 2 minutes once its Debian
#      packages are installed.
# Set BRAID_SKIP_MODEL=1 to skip the model download, BRAID_SKIP_RACE=1 to
# skip step 3 (it is then listed as skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

# Per-phase timing: `phase NAME` closes the previous phase and opens NAME;
# the table at exit gives each phase's wall time and the CPU time (user+sys)
# of the processes it waited for (this shell's cutime+cstime in
# /proc/$$/stat), which the shared-machine load does not inflate the way it
# inflates wall time.
phase_rows=() phase_name="" phase_t0=0 phase_c0=0 suite_t0=$(date +%s) clk_tck=$(getconf CLK_TCK)
child_cpu() { local s; s=$(cat /proc/$$/stat 2>/dev/null) || { echo 0; return; }; s=${s##*) }; set -- $s; echo $(( (${14} + ${15}) / clk_tck )); }
phase() {
  local now cpu; now=$(date +%s); cpu=$(child_cpu)
  [ -n "$phase_name" ] && phase_rows+=("$(printf '%6d s wall %6d s cpu  %s' $((now - phase_t0)) $((cpu - phase_c0)) "$phase_name")")
  phase_name=$1 phase_t0=$now phase_c0=$cpu
  [ -n "$1" ] && echo "== [$(date -u +%H:%M:%S) +$((now - suite_t0))s] $1"
  return 0
}
phase_report() {
  local rc=$?; phase ""
  echo "== time per phase ($(nproc) cores; load at the end: $(cut -d' ' -f1-3 /proc/loadavg))"
  printf '%s\n' "${phase_rows[@]}"
  echo "$(printf '%6d' $(( $(date +%s) - suite_t0 ))) s wall in all (exit $rc)"
}
trap phase_report EXIT

if [ "${BRAID_SKIP_MODEL:-0}" != 1 ] && [ -x scripts/get-minilm.sh ] && [ ! -f models/all-MiniLM-L6-v2/model.safetensors ]; then
  phase "installing all-MiniLM-L6-v2 (scripts/get-minilm.sh)"
  bash scripts/get-minilm.sh || echo "WARNING: model install failed; MiniLM tests will print SKIPPED"
fi

# Mesa's software Vulkan driver (lavapipe), so the wgpu backend's tests and
# `braid check --device wgpu` run on a machine without a GPU.
if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  phase "installing mesa-vulkan-drivers (lavapipe, for the wgpu backend)"
  { apt-get update -qq && apt-get install -y -qq mesa-vulkan-drivers >/dev/null; } || echo "WARNING: mesa-vulkan-drivers could not be installed; wgpu tests will print SKIPPED"
fi

phase "cargo test --workspace --release: build"
mkdir -p target
# braid-batch and braid-serve build no unit-test binary (`[lib] test = false`
# in their Cargo.toml): a #[test] in their src/ would never run, so it is an
# error here.
for c in batch serve; do
  if grep -rlE '#\[(cfg\(test\)|test)\]' crates/$c/src; then
    echo "FAILED: unit tests in crates/$c/src (above) would not run: delete '[lib] test = false' from crates/$c/Cargo.toml"; exit 1
  fi
done
# --timings: target/cargo-timings/cargo-timing.html shows what each crate and
# test binary cost (docs/ci.md).
cargo test --workspace --release --no-run --timings
phase "cargo test --workspace --release: run"
# --nocapture: the tests' figures (threads, cycles, slots leaked) and every
# SKIPPED line (GPU tests without a GPU, model tests without the model) show.
cargo test --workspace --release -- --nocapture 2>&1 | tee target/test.log
phase "skipped (what needs a GPU or the model and did not run here):"
grep -h "SKIPPED" target/test.log | sed 's/^ *//' | sort | uniq -c || true

phase "pip install of the HTTP client libraries"
# The real clients (openai, huggingface_hub, langchain-openai,
# prometheus_client) from PyPI; the script prints SKIPPED without the model
# and exits non-zero if any check fails, which fails this script.
python3 -m pip install --quiet --disable-pip-version-check openai huggingface_hub langchain-openai prometheus_client numpy 2>&1 | grep -v "Running pip as the 'root' user" || true
# The test build above linked target/release/braid (the CLI's integration
# tests run it). `cargo build -p braid` is not run: resolving one package's
# features without the dev-dependencies turns num-traits' std feature off,
# which rebuilt half, naga, wgpu and all of braid (2.5 min on 2 cores).
[ -x target/release/braid ] || { echo "FAILED: the test build did not leave target/release/braid"; exit 1; }
phase "HTTP client libraries against a real braid serve (crates/serve/tests/clients/test_clients.py)"
if ! python3 crates/serve/tests/clients/test_clients.py --braid target/release/braid 2>&1 | tee target/clients.log; then
  echo "FAILED: HTTP client tests (target/clients.log)"
  exit 1
fi

phase "braid check --device wgpu (lavapipe here: every op and module vs the f64 reference)"
if target/release/braid check --device wgpu --threads 4 --iters 2 > target/check-wgpu.log 2>&1; then
  grep -cE "^PASS" target/check-wgpu.log | sed 's/^/PASS lines: /'; grep -E "^SKIPPED" target/check-wgpu.log || true
elif grep -q "no wgpu adapter" target/check-wgpu.log; then
  echo "SKIPPED: braid check --device wgpu (no wgpu adapter)"
else
  tail -20 target/check-wgpu.log; echo "FAILED: braid check --device wgpu (target/check-wgpu.log)"; exit 1
fi

phase "deploy: the Kubernetes manifests (scripts/validate-deploy.sh)"
bash scripts/validate-deploy.sh 2>&1 | grep -v "^INFO" || { echo "FAILED: deploy manifests"; exit 1; }
phase "deploy: two replicas behind nginx with one failing (scripts/failover.py, docs/deploy.md)"
command -v nginx >/dev/null || command -v /usr/sbin/nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx >/dev/null; } || echo "WARNING: nginx could not be installed"
set +e
python3 scripts/failover.py --braid target/release/braid --logdir target/failover 2>&1 | tail -3
rc=${PIPESTATUS[0]}
set -e
# 2: something it needs is missing (it printed SKIPPED); 1: a failure.
[ "$rc" = 1 ] && { echo "FAILED: replica failover behind nginx (target/failover)"; exit 1; }

phase "loom models"
# --no-default-features: the models need neither the CUDA nor the wgpu crates
# (both backends are compiled out under --cfg loom), and building wgpu again
# in target/loom would cost minutes.
for crate in braid-runtime braid-batch; do
  for model in crates/${crate#braid-}/tests/loom*.rs; do
    [ -f "$model" ] || continue
    RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=${LOOM_MAX_PREEMPTIONS:-3} \
      cargo test --release -p "$crate" --no-default-features --test "$(basename "$model" .rs)" -- --nocapture --test-threads 1 2>&1 | grep -E "loom model|test result|panicked|FAILED"
  done
done

phase "data-race checks (scripts/race-check.sh)"
if [ "${BRAID_SKIP_RACE:-0}" = 1 ]; then
  echo "SKIPPED: race checks (BRAID_SKIP_RACE=1)"
else
  bash scripts/race-check.sh
fi

#!/usr/bin/env bash
# The model families on a GPU (run by hand on a CUDA machine; CI runs the same
# checks on CPU): every family fixture and the pretrained models against their
# Python references on CUDA, through the Rust tests and through `braid check`.
# Prints, per family, the worst cosine and the max abs difference.
#
# Usage: scripts/gpu-families.sh   (from the repository root; needs a CUDA driver)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/get-minilm.sh
[ -n "${SKIP_MPNET:-}" ] || bash scripts/get-mpnet.sh
cargo build --release -p braid
BRAID_TEST_DEVICE=cuda cargo test --release -p braid-nn --test families -- --nocapture --test-threads 1 2>&1 | grep -E "worst cosine|test result|panicked"
./target/release/braid check --device cuda 2>&1 | grep -E "family|minilm|attention packed qkv \+ bias|passed"
[ -n "${SKIP_MPNET:-}" ] || ./target/release/braid check --device cuda --threads 2 --iters 2 --model models/all-mpnet-base-v2 2>&1 | grep -E "all-mpnet|passed"

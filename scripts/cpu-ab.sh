#!/usr/bin/env bash
# Same-run A/B of braid builds or settings on the CPU, robust to a loaded
# machine. A VARIANT is a braid binary, optionally preceded by environment
# settings, as one word: ".bin/braid", "BRAID_PACK=0 .bin/braid",
# "BRAID_CPU_THREADS=8 /tmp/old/braid". No cargo is needed.
#
# Story mode (the batching rows of `braid bench story`, next to PyTorch):
#
#   scripts/cpu-ab.sh story VARIANT VARIANT... [> table.md]
#
#   ROUNDS rounds (default 3); each runs every variant's
#   `bench story --device cpu --quick --sections batching --batches BATCHES`
#   (default 8,32,128) for WORKLOAD (default minilm) in turn, then
#   bench/peers/torch_story.py on the same rows (TORCH=0 skips it). Prints,
#   per batch, every variant's median samples/s over the rounds and its ratio
#   to PyTorch's median and to the first variant. OUT (default a temp dir)
#   keeps the JSONs. On 16 cores, minilm 8,32,128 with 3 rounds and 2
#   variants takes about 2 minutes.
#
# Embed mode (the original): R rounds, each running `braid embed --device
# cpu` with one text and with N texts (about 100 words each) for A, then B;
# reports the median of (time with N texts - time with one text), i.e. the
# forward work without process start and model load, and B/A.
#
#   scripts/cpu-ab.sh OLD_VARIANT NEW_VARIANT [N=64] [R=5]
#
# Needs models/all-MiniLM-L6-v2 (scripts/get-minilm.sh) for minilm, and
# python3 with torch for the PyTorch rows.
set -euo pipefail
cd "$(dirname "$0")/.."

# Run variant $1 (env words then the binary) with the remaining arguments.
runv() { local -a w; read -ra w <<< "$1"; shift; env "${w[@]}" "$@"; }

if [ "${1:-}" = story ]; then
  shift
  [ $# -ge 1 ] || { echo "usage: scripts/cpu-ab.sh story VARIANT [VARIANT...]" >&2; exit 2; }
  rounds=${ROUNDS:-3}; batches=${BATCHES:-8,32,128}; workload=${WORKLOAD:-minilm}
  out=${OUT:-$(mktemp -d)}; mkdir -p "$out"
  printf '%s\n' "$@" > "$out/variants.txt"
  for i in $(seq "$rounds"); do
    v=0
    for spec in "$@"; do
      echo "round $i variant $v: $spec" >&2
      runv "$spec" bench story --device cpu --workload "$workload" --quick --sections batching --batches "$batches" --json "$out/v$v-r$i.json" > /dev/null 2> "$out/v$v-r$i.log" || { tail -5 "$out/v$v-r$i.log" >&2; exit 1; }
      v=$((v + 1))
    done
    if [ "${TORCH:-1}" != 0 ]; then
      echo "round $i torch" >&2
      PYTHONUNBUFFERED=1 python3 bench/peers/torch_story.py --device cpu --workload "$workload" --quick --sections batching --batches "$batches" --json "$out/torch-r$i.json" > /dev/null 2> "$out/torch-r$i.log" || { tail -5 "$out/torch-r$i.log" >&2; exit 1; }
    fi
  done
  { lscpu 2>/dev/null | grep -E "Model name|^CPU\(s\)" ; uptime; } > "$out/cpu.txt" || true
  python3 - "$out" "$rounds" "$#" <<'PY'
import json, sys, statistics as st, os
out, rounds, nv = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
specs = open(os.path.join(out, "variants.txt")).read().splitlines()
def rows(path):
    d = json.load(open(path))
    return {r["batch"]: r["samples_per_s"] for r in d["results"] if r.get("kind") == "batching"}
runs = {f"v{v}": [rows(f"{out}/v{v}-r{i}.json") for i in range(1, rounds + 1)] for v in range(nv)}
if os.path.exists(f"{out}/torch-r1.json"):
    runs["torch"] = [rows(f"{out}/torch-r{i}.json") for i in range(1, rounds + 1)]
batches = sorted(runs["v0"][0])
print(f"cpu-ab story: {rounds} rounds, medians in samples/s ({open(out + '/cpu.txt').read().splitlines()[0].strip() if os.path.getsize(out + '/cpu.txt') else ''})\n")
for v in range(nv):
    print(f"- v{v}: `{specs[v]}`")
print()
head = ["batch"] + [f"v{v}" for v in range(nv)] + (["torch"] + [f"v{v}/torch" for v in range(nv)] if "torch" in runs else []) + [f"v{v}/v0" for v in range(1, nv)]
print("| " + " | ".join(head) + " |")
print("| " + " | ".join(["---"] + ["---:"] * (len(head) - 1)) + " |")
for b in batches:
    med = {k: st.median(r[b] for r in rs) for k, rs in runs.items()}
    cells = [str(b)] + [f"{med[f'v{v}']:.1f}" for v in range(nv)]
    if "torch" in runs:
        cells += [f"{med['torch']:.1f}"] + [f"{med[f'v{v}'] / med['torch']:.2f}x" for v in range(nv)]
    cells += [f"{med[f'v{v}'] / med['v0']:.2f}x" for v in range(1, nv)]
    print("| " + " | ".join(cells) + " |")
print(f"\nper-round samples/s (JSONs in {out}):")
for k, rs in runs.items():
    print(f"  {k}: " + "; ".join(", ".join(f"{b}:{r[b]:.1f}" for b in batches) for r in rs))
PY
  exit 0
fi

a=${1:?usage: scripts/cpu-ab.sh OLD_VARIANT NEW_VARIANT [N] [R] | scripts/cpu-ab.sh story VARIANT...}; b=${2:?}; n=${3:-64}; r=${4:-5}
mapfile -t texts < <(python3 - "$n" <<'PY'
import sys, random
random.seed(14)
words = "the a runtime model thread stream device kernel batch token sentence embedding fast slow memory cache core pool weight pack matrix vector answer question river mountain city music".split()
for i in range(int(sys.argv[1])):
    print(" ".join(random.choice(words) for _ in range(100)))
PY
)
t() { local s e; s=$(date +%s.%N); "$@" > /dev/null; e=$(date +%s.%N); python3 -c "print($e - $s)"; }
declare -A res
for i in $(seq "$r"); do
  for which in A B; do
    spec=$a; [ $which = B ] && spec=$b
    one=$(t runv "$spec" embed --device cpu "${texts[0]}")
    many=$(t runv "$spec" embed --device cpu "${texts[@]}")
    res[$which]+="$(python3 -c "print($many - $one)") "
    echo "round $i $which: 1 text ${one}s, $n texts ${many}s" >&2
  done
done
python3 - "${res[A]}" "${res[B]}" "$n" <<'PY'
import sys, statistics as st
a = [float(x) for x in sys.argv[1].split()]; b = [float(x) for x in sys.argv[2].split()]; n = int(sys.argv[3])
ma, mb = st.median(a), st.median(b)
print(f"{n - 1} extra texts: A median {ma*1000:.0f} ms ({(n-1)/ma:.1f} texts/s), B median {mb*1000:.0f} ms ({(n-1)/mb:.1f} texts/s), B speed / A speed {ma/mb:.2f}x")
print(f"A rounds (s): {' '.join(f'{x:.2f}' for x in a)}")
print(f"B rounds (s): {' '.join(f'{x:.2f}' for x in b)}")
PY

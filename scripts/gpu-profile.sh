#!/usr/bin/env bash
# Where the GPU time goes (issue 13): nsys traces of braid's MiniLM forward and
# of PyTorch's, same GPU, same dtype, same batch, then the per-kernel and
# per-API summaries (`nsys stats`). Finds nsys/ncu wherever the CUDA install
# put them. Everything lands in OUTDIR.
#
#   scripts/gpu-profile.sh OUTDIR            (DTYPE=bf16 BATCHES="1 512")
#
# Needs .bin/braid (BRAID=...), models/all-MiniLM-L6-v2, python3 with torch.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu-profile.sh OUTDIR}
braid=${BRAID:-.bin/braid}
dt=${DTYPE:-bf16}
mkdir -p "$out"
find_tool() {
    command -v "$1" 2>/dev/null && return
    find /usr/local /opt /usr/lib /usr/bin -name "$1" -type f -perm -u+x 2>/dev/null | head -1
    python3 -c "import nvidia, os; print(os.path.dirname(nvidia.__file__))" 2>/dev/null | xargs -r -I{} find {} -name "$1" -type f 2>/dev/null | head -1
}
nsys=$(find_tool nsys | head -1)
ncu=$(find_tool ncu | head -1)
echo "nsys: ${nsys:-none}; ncu: ${ncu:-none}; compute-sanitizer: $(find_tool compute-sanitizer | head -1)" | tee "$out/tools.txt"
for lib in libcublas.so.13 libnvrtc.so.13; do
    d=$(find /usr/local/cuda*/ /usr/lib/x86_64-linux-gnu /opt /usr/local/lib -name "$lib" -print -quit 2>/dev/null | xargs -r dirname)
    [[ -n "$d" ]] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
[[ -z "$nsys" ]] && { echo "SKIPPED (no nsys found)"; exit 2; }
for b in ${BATCHES:-1 512}; do
    "$nsys" profile -q -t cuda -o "$out/braid-b$b" -f true "$braid" bench story --device cuda --workload minilm --dtype "$dt" --quick --sections batching --batches "$b" > "$out/braid-b$b.md" 2>"$out/braid-b$b.log"
    "$nsys" stats -q -r cuda_gpu_kern_sum,cuda_api_sum -f csv -o "$out/braid-b$b" "$out/braid-b$b.nsys-rep" >/dev/null 2>&1
    PYTHONUNBUFFERED=1 "$nsys" profile -q -t cuda -o "$out/torch-b$b" -f true python3 bench/peers/torch_story.py --device cuda --workload minilm --dtype "$dt" --quick --sections batching --batches "$b" > "$out/torch-b$b.log" 2>&1
    "$nsys" stats -q -r cuda_gpu_kern_sum,cuda_api_sum -f csv -o "$out/torch-b$b" "$out/torch-b$b.nsys-rep" >/dev/null 2>&1
    for who in braid torch; do
        echo "== $who batch $b: top kernels (time %, total ns, instances, name)"
        python3 - "$out/$who-b${b}_cuda_gpu_kern_sum.csv" <<'PY'
import csv, sys
try:
    rows = list(csv.DictReader(open(sys.argv[1])))
except OSError:
    print("  (no summary)"); sys.exit()
for r in rows[:14]:
    print(f"  {float(r['Time (%)']):5.1f}% {int(float(r['Total Time (ns)'])):>12} {r['Instances']:>7}  {r['Name'][:110]}")
PY
    done
done | tee "$out/summary.txt"
rm -f "$out"/*.sqlite

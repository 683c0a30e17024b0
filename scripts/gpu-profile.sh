#!/usr/bin/env bash
# Where the GPU time goes (issue 13): Nsight Compute (ncu) timings of every
# kernel in a window of braid's MiniLM forwards and of PyTorch's, same GPU,
# same dtype, same batch. Only gpu__time_duration is collected (one pass, no
# replay). `scripts/profile-summary.py OUTDIR` turns the CSVs into a
# per-forward table. (The GPU host's nsys is incomplete: it cannot import its
# own traces, so nsys is not used.)
#
#   scripts/gpu-profile.sh OUTDIR     (DTYPE=bf16 BATCHES="1 512")
#
# Needs .bin/braid (BRAID=...), models/all-MiniLM-L6-v2, python3 with torch.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu-profile.sh OUTDIR}
braid=${BRAID:-.bin/braid}
dt=${DTYPE:-bf16}
mkdir -p "$out"
ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null)
[[ -z "$ncu" ]] && { echo "SKIPPED (no ncu found)"; exit 2; }
for lib in libcublas.so.13 libnvrtc.so.13; do
    d=$(find /usr/local/cuda*/ /usr/lib/x86_64-linux-gnu /opt /usr/local/lib -name "$lib" -print -quit 2>/dev/null | xargs -r dirname)
    [[ -n "$d" ]] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
m="--metrics gpu__time_duration.sum --csv --print-units base --clock-control none --cache-control none"
for b in ${BATCHES:-1 512}; do
    echo "== batch $b" >&2
    timeout ${STEP_S:-100} "$ncu" $m --launch-skip ${SKIP:-400} --launch-count ${COUNT:-400} "$braid" bench story --device cuda --workload minilm --dtype "$dt" --quick --sections batching --batches "$b" > "$out/braid-b$b.csv" 2>"$out/braid-b$b.log"
    PYTHONUNBUFFERED=1 timeout ${STEP_S:-100} "$ncu" $m --launch-skip ${TSKIP:-1500} --launch-count ${COUNT:-400} python3 bench/peers/torch_story.py --device cuda --workload minilm --dtype "$dt" --quick --sections batching --batches "$b" > "$out/torch-b$b.csv" 2>"$out/torch-b$b.log"
done
python3 scripts/profile-summary.py "$out" | tee "$out/summary.md"

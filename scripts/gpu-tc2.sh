#!/usr/bin/env bash
# Issue 13, second pass: the vectorised memory-bound kernels and the 16-byte
# attention tile loads, measured against the previous build in the same call
# on the same GPU. Two prebuilt stripped braid binaries (gzipped to fit the
# device tool's transfer), no cargo:
#
#   BIN=DIR scripts/gpu-tc2.sh OUTDIR
#     env: DTYPE=bf16 WORKLOADS="minilm mixed" BATCHES=1,32,512
#          MIXED_BATCHES=128,512 PROF_BATCHES="512 1" CHECK_S=35 (0: no check)
#          STORY_S=22 NCU_S=14 (per-step time limits, seconds)
#     DIR/braid-new.gz  this branch     DIR/braid-old.gz  the baseline build
#
# Steps (each bounded by `timeout`): `braid check --dtype bf16` with the new
# build; `bench story` batching rows (MiniLM 128 tokens and the mixed set,
# bf16) new then old; Nsight Compute kernel durations (gpu__time_duration
# only) of a window of each build's batch-512 and batch-1 forwards, summed per
# kernel by scripts/profile-summary.py. Needs models/all-MiniLM-L6-v2.
# The new build runs before the old one in every step, and `nvidia-smi`'s
# process list is logged after each step (gpu-after.txt): on 2026-11-25 an
# H200 stopped making progress for every later process once a `bench story`
# of the old build had started (bench/results/2026-11-25-h200-tc2/README.md).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: BIN=DIR scripts/gpu-tc2.sh OUTDIR}
bin=${BIN:-.bin-t}
mkdir -p "$out" /tmp/tc2
for v in new old; do gunzip -c "$bin/braid-$v.gz" > /tmp/tc2/braid-$v && chmod +x /tmp/tc2/braid-$v; done
for lib in libcublas.so.13 libnvrtc.so.13; do
    d=$(find /usr/local/cuda*/ /usr/lib/x86_64-linux-gnu /opt /usr/local/lib -name "$lib" -print -quit 2>/dev/null | xargs -r dirname)
    [[ -n "$d" ]] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1
dt=${DTYPE:-bf16}
if [[ "${CHECK_S:-35}" != 0 ]]; then
    echo "== check $dt (new)"
    timeout -k 5 ${CHECK_S:-35} /tmp/tc2/braid-new check --device cuda --dtype "$dt" --threads 4 --iters 2 > "$out/check-$dt.txt" 2>&1
    echo "rc=$?" >> "$out/check-$dt.txt"
    grep -E "passed|failed|FAIL|cosine" "$out/check-$dt.txt" | tail -8
fi
smi() { echo "== after $1" >> "$out/gpu-after.txt"; nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv >> "$out/gpu-after.txt" 2>&1; }
for v in new old; do
    for w in ${WORKLOADS:-minilm mixed}; do
        echo "== story $v $w"
        bs=${BATCHES:-1,32,512}; [[ $w == mixed ]] && bs=${MIXED_BATCHES:-128,512}
        timeout -k 5 ${STORY_S:-22} /tmp/tc2/braid-$v bench story --device cuda --workload $w --dtype "$dt" --quick --sections batching --batches "$bs" > "$out/story-$v-$w.txt" 2>&1
        echo "rc=$?" >> "$out/story-$v-$w.txt"
        smi "story $v $w"
    done
done
ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null)
if [[ -n "$ncu" ]]; then
    m="--metrics gpu__time_duration.sum --csv --print-units base --clock-control none --cache-control none"
    mkdir -p "$out/prof"
    for b in ${PROF_BATCHES:-512 1}; do
        for v in new old; do
            echo "== ncu $v b$b"
            timeout -k 5 ${NCU_S:-14} "$ncu" $m --launch-skip ${SKIP:-200} --launch-count ${COUNT:-80} /tmp/tc2/braid-$v bench story --device cuda --workload minilm --dtype "$dt" --quick --sections batching --batches "$b" > "$out/prof/$v-b$b.csv" 2>"$out/prof/$v-b$b.log"
            smi "ncu $v b$b"
        done
    done
    python3 "$bin/profile-summary.py" "$out/prof" > "$out/prof/summary.md" 2>&1 || python3 scripts/profile-summary.py "$out/prof" > "$out/prof/summary.md" 2>&1
else
    echo "SKIPPED (no ncu)" | tee "$out/prof-skipped.txt"
fi
echo "== done"

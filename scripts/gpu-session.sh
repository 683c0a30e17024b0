#!/usr/bin/env bash
# Every GPU-host measurement the open issues need, in one device call, each
# step under its own time cap (the device budget is small), most important
# first. Results land in OUTDIR (and OUTDIR/all.tgz):
#   1. tc/     issue 13: `braid check --dtype bf16`; MiniLM bf16 story (128
#              tokens, and the mixed-length set) braid then PyTorch bf16, same
#              GPU; `bench compare` tables;
#   2. serve/  issue 13: `braid serve --dtype bf16`, 1 and 16 clients (oha if
#              /tmp/oha exists, else Python clients);
#   3. cpu16/  issue 14: the CPU story's batching rows (mlp, encoder, minilm)
#              braid vs PyTorch CPU on the host's cores (scripts/cpu-ab.sh);
#   4. wgpu/   issue 15: batching and thread rows of mlp and minilm on wgpu
#              (Vulkan, loader from .debs/) and on cuda;
#   5. race/   issue 13: compute-sanitizer racecheck and memcheck on the packed
#              attention test (needs RUNTIME_TESTS, a staged test binary).
#
#   scripts/gpu-session.sh OUTDIR        (STEPS="tc serve cpu16 wgpu race")
#
# Needs .bin/braid (BRAID=...), models/all-MiniLM-L6-v2, python3 with torch.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu-session.sh OUTDIR}
braid=${BRAID:-.bin/braid}
steps=${STEPS:-tc serve cpu16 wgpu race}
mkdir -p "$out"
for lib in libcublas.so.13 libnvrtc.so.13; do
    d=$(find /usr/local/cuda*/ /usr/lib/x86_64-linux-gnu /opt /usr/local/lib -name "$lib" -print -quit 2>/dev/null | xargs -r dirname)
    [[ -n "$d" ]] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; nproc; } > "$out/machine.txt" 2>&1
"$braid" info > "$out/info.txt" 2>&1
t0=$(date +%s)
mark() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$out/steps.txt" >&2; }
has() { [[ " $steps " == *" $1 "* ]]; }

if has tc; then
    o=$out/tc; mkdir -p "$o"
    mark "tc: check bf16"
    timeout 60 "$braid" check --device cuda --dtype bf16 --threads 4 --iters 5 > "$o/check-bf16.txt" 2>&1
    grep -E "minilm|segment|passed" "$o/check-bf16.txt" | tail -4 >&2
    for w in minilm mixed; do
        secs=correctness,batching,dynamic; [[ $w == mixed ]] && secs=batching
        mark "tc: $w braid"
        timeout 60 "$braid" bench story --device cuda --workload $w --dtype bf16 --quick --sections $secs --json "$o/braid-$w.json" > "$o/braid-$w.md" 2> "$o/braid-$w.log"
        mark "tc: $w torch"
        PYTHONUNBUFFERED=1 timeout 80 python3 bench/peers/torch_story.py --workload $w --dtype bf16 --quick --sections $secs --json "$o/torch-$w.json" > "$o/torch-$w.log" 2>&1
        [[ -f $o/braid-$w.json && -f $o/torch-$w.json ]] && "$braid" bench compare "$o/braid-$w.json" "$o/torch-$w.json" > "$o/compare-$w.md" 2>&1
        grep -A9 "### batching" "$o/compare-$w.md" >&2
    done
fi

if has serve; then
    o=$out/serve; mkdir -p "$o"
    mark "serve: bf16, 1 and 16 clients"
    "$braid" serve --device cuda --dtype bf16 --port 18080 --log-requests false > "$o/serve.log" 2>&1 &
    pid=$!
    for _ in $(seq 60); do python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:18080/health', timeout=1)" 2>/dev/null && break; sleep 0.5; done
    oha=(); [[ -x /tmp/oha ]] && oha=(--oha /tmp/oha)
    timeout 40 python3 bench/serve_load.py --url http://127.0.0.1:18080 --clients 1 16 --seconds 4 "${oha[@]}" --pid $pid --json "$o/load.json" > "$o/load.md" 2>&1
    cat "$o/load.md" >&2
    kill $pid; wait $pid 2>/dev/null
fi

if has cpu16; then
    o=$out/cpu16; mkdir -p "$o"
    for w in minilm mlp encoder; do
        b=1,8,32,128; [[ $w != minilm ]] && b=1,8,64,256
        mark "cpu16: $w"
        CUDA_VISIBLE_DEVICES= ROUNDS=1 BATCHES=$b WORKLOAD=$w OUT=$o/$w timeout 70 scripts/cpu-ab.sh story "$braid" > "$o/$w.md" 2> "$o/$w.log"
        grep "^|" "$o/$w.md" >&2
    done
fi

if has wgpu; then
    o=$out/wgpu; mkdir -p "$o"
    mark "wgpu: loader"
    if ! ldconfig -p | grep -q libvulkan.so.1; then
        for d in .debs/*.deb; do dpkg -x "$d" /; done
        ldconfig
    fi
    export VK_DRIVER_FILES=${VK_DRIVER_FILES:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}
    "$braid" info > "$o/info.txt" 2>&1
    for w in mlp minilm; do
        for dev in wgpu cuda; do
            mark "wgpu: $w on $dev"
            timeout 45 "$braid" bench story --device $dev --workload $w --quick --sections threads,batching --json "$o/$w-$dev.json" > "$o/$w-$dev.md" 2> "$o/$w-$dev.log"
        done
        [[ -f $o/$w-wgpu.json && -f $o/$w-cuda.json ]] && "$braid" bench compare "$o/$w-wgpu.json" "$o/$w-cuda.json" > "$o/compare-$w.md" 2>&1 && grep -A8 "### batching" "$o/compare-$w.md" >&2
    done
fi

if has race && [[ -n "${RUNTIME_TESTS:-}" ]]; then
    o=$out/race; mkdir -p "$o"
    for tool in racecheck memcheck; do
        mark "race: $tool"
        extra=""; [[ $tool == racecheck ]] && extra="--racecheck-report all"
        BRAID_ATTN_SMALL=1 timeout ${RACE_S:-80} compute-sanitizer --tool $tool $extra --error-exitcode 9 "$RUNTIME_TESTS" attention_varlen --test-threads=1 > "$o/$tool.log" 2>&1
        echo "$tool rc=$?: $(grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result" "$o/$tool.log" | tr '\n' ' ')" | tee -a "$o/summary.txt" >&2
    done
fi
mark "done"
(cd "$out" && tar czf all.tgz --exclude all.tgz .)

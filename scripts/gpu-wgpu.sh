#!/usr/bin/env bash
# braid's wgpu backend on the GPU machine's Vulkan driver (H100), next to
# CUDA in the same call; no Rust toolchain and no internet needed there.
#
#   here:  cargo build --release -p braid && strip -o .bin/braid target/release/braid
#          mkdir -p .debs && (cd .debs && apt-get download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
#   there: scripts/gpu-wgpu.sh OUTDIR [--quick]
#
# Installs the Vulkan loader from the .debs carried in .debs/ (dpkg -x into
# /, ldconfig), points the loader at NVIDIA's ICD, then writes to OUTDIR:
# vulkan.txt (ICD and loader found), info.txt (`braid info`: the wgpu
# adapters), check-wgpu.txt (`braid check --device wgpu`: every op and
# module vs the f64 reference, MiniLM vs sentence-transformers), and
# `braid bench story` for mlp and minilm on --device wgpu and --device cuda
# (story-<workload>-<device>.json/.md/.log) and their comparisons
# (compare-<workload>.md: cuda as the peer), and profile-minilm-wgpu.md (the
# wgpu per-kernel profile). BRAID overrides .bin/braid.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu-wgpu.sh OUTDIR [--quick]}
shift
quick=${1:-}
braid=${BRAID:-.bin/braid}
mkdir -p "$out"

if ! ldconfig -p | grep -q libvulkan.so.1; then
  if ls .debs/*.deb >/dev/null 2>&1; then
    for d in .debs/*.deb; do dpkg -x "$d" / || echo "dpkg -x $d failed" >&2; done
    ldconfig
  else
    echo "no libvulkan.so.1 and no .debs/ to install it from" | tee "$out/vulkan.txt" >&2
  fi
fi
if [ -z "${VK_DRIVER_FILES:-}" ]; then
  for f in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json; do
    [ -f "$f" ] && export VK_DRIVER_FILES=$f && break
  done
fi
{
  echo "VK_DRIVER_FILES=${VK_DRIVER_FILES:-unset}"
  [ -n "${VK_DRIVER_FILES:-}" ] && cat "$VK_DRIVER_FILES"
  ldconfig -p | grep -E "libvulkan|libGLX_nvidia|libEGL_nvidia" || true
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
} >> "$out/vulkan.txt"

"$braid" info > "$out/info.txt" 2>&1
cat "$out/info.txt"
rc=0
"$braid" check --device wgpu > "$out/check-wgpu.txt" 2>&1 || rc=1
grep -cE "^PASS" "$out/check-wgpu.txt" | sed 's/^/check --device wgpu: PASS lines: /'
grep -E "^(FAIL|SKIPPED)" "$out/check-wgpu.txt" || true
for w in mlp minilm; do
  for dev in wgpu cuda; do
    echo "== $w on $dev" >&2
    "$braid" bench story --device "$dev" --workload "$w" $quick --json "$out/story-$w-$dev.json" > "$out/story-$w-$dev.md" 2> "$out/story-$w-$dev.log" || { rc=1; tail -5 "$out/story-$w-$dev.log"; }
  done
  if [ -f "$out/story-$w-wgpu.json" ] && [ -f "$out/story-$w-cuda.json" ]; then
    "$braid" bench compare "$out/story-$w-wgpu.json" "$out/story-$w-cuda.json" > "$out/compare-$w.md" 2>&1 && cat "$out/compare-$w.md"
  fi
done
# Where wgpu's time goes: host-path counters (dispatches, submits, waits,
# bind groups, uniform/staging buffers) and per-kernel wall time, each kernel
# submitted and waited for alone (BRAID_WGPU_PROFILE; docs/backends.md).
BRAID_WGPU_PROFILE=1 timeout 180 "$braid" bench story --device wgpu --workload minilm --quick --sections batching --batches 1,32 > "$out/profile-minilm-wgpu.md" 2>&1 || rc=1
grep -E "^(wgpu|\| )" "$out/profile-minilm-wgpu.md" | tail -12
exit $rc

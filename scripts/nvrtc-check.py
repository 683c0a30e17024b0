#!/usr/bin/env python3
"""Compile every CUDA unit of crates/runtime/src/backend/cuda/source.rs with
NVRTC for sm_90 on a machine without a GPU (NVRTC needs no device).
Catches compile errors before a GPU run. Needs libnvrtc (pip's nvidia-cuda-nvrtc, or a CUDA toolkit); prints
SKIPPED when there is none. Usage: python3 scripts/nvrtc-check.py [sm_XX]"""
import ctypes, glob, os, re, sys

arch = sys.argv[1] if len(sys.argv) > 1 else "sm_90"
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
src = open(os.path.join(root, "crates/runtime/src/backend/cuda/source.rs")).read()
cands = glob.glob("/usr/local/cuda*/lib64/libnvrtc.so*") + glob.glob(os.path.join(sys.prefix, "lib/python3*/site-packages/nvidia/*/lib/libnvrtc.so*"))
try:
    import site
    for d in site.getsitepackages():
        cands += glob.glob(os.path.join(d, "nvidia/*/lib/libnvrtc.so*")) + glob.glob(os.path.join(d, "nvidia/cuda_nvrtc/lib/libnvrtc.so*"))
except Exception:
    pass
cands = [c for c in cands if "builtins" not in c and "alt" not in c]
if not cands:
    print("SKIPPED (no libnvrtc found)")
    sys.exit(0)
nv = ctypes.CDLL(sorted(cands)[-1])
prelude = re.search(r'macro_rules! prelude \{\s*\(\) => \{\s*r#"(.*?)"#', src, re.S).group(1)
units = {}
for m in re.finditer(r'pub\(crate\) const (\w+): &str = concat!\(\s*prelude!\(\),\s*r#"(.*?)"#\s*\);', src, re.S):
    units[m.group(1)] = prelude + m.group(2)
bad = 0
for unit, code in units.items():
    prog = ctypes.c_void_p()
    assert nv.nvrtcCreateProgram(ctypes.byref(prog), code.encode(), unit.encode(), 0, None, None) == 0
    opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++17"]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    r = nv.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    nv.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nv.nvrtcGetProgramLog(prog, log)
    text = log.value.decode(errors="replace").strip()
    print(f"{unit}: {'ok' if r == 0 else 'FAILED'}" + (f"\n{text}" if text else ""))
    bad += r != 0
sys.exit(1 if bad else 0)

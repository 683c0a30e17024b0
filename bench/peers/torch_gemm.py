"""PyTorch CPU (MKL / oneDNN) on the shapes of braid's `gemm_shapes` example:
torch.nn.functional.linear(x[m,k], w[n,k], b[n]) in GFLOP/s, best of 5
windows of ~40 ms, so braid's kernels have a peer measured in the same run.

    python3 bench/peers/torch_gemm.py [--quick] [--threads N]
"""
import argparse
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--quick", action="store_true")
ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
args = ap.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
ms = [16, 128, 512, 2048] if args.quick else [1, 16, 128, 512, 2048, 16384]
shapes = [(m, n, k) for m in ms for (n, k) in [(384, 384), (1152, 384), (1536, 384), (384, 1536)]]
shapes += [(1, 1024, 512), (8, 1024, 1024), (64, 1024, 512), (256, 1024, 1024)]
print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; GFLOP/s (best of 5)")
print("| m x n x k | torch linear |")
print("|---|---:|")
g = torch.Generator().manual_seed(0)
with torch.inference_mode():
    for m, n, k in shapes:
        x = torch.rand(m, k, generator=g) * 2 - 1
        w = torch.rand(n, k, generator=g) * 2 - 1
        b = torch.rand(n, generator=g)
        torch.nn.functional.linear(x, w, b)
        best = 0.0
        for _ in range(5):
            t0, reps = time.perf_counter(), 0
            while time.perf_counter() - t0 < 0.04:
                torch.nn.functional.linear(x, w, b)
                reps += 1
            best = max(best, 2 * m * n * k * reps / (time.perf_counter() - t0) / 1e9)
        print(f"| {m} x {n} x {k} | {best:.1f} |")

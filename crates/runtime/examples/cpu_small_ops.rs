//! Latency of the small kernels a batch-1 forward is made of (the `mlp`
//! story's GEMVs: 1 × 1024 × 512, 1 × 1024 × 1024, 1 × 512 × 1024), called
//! directly (no stream), median and p90 of 2000 calls, to see what the
//! intra-op pool adds or saves for them. The pool size is
//! `BRAID_CPU_THREADS`; run once with 1 and once with the default:
//! `cargo run --release -p braid-runtime --no-default-features --example cpu_small_ops`

use braid_runtime::backend::cpu::{kernels, pool};
use braid_runtime::Activation;
use std::time::Instant;

fn main() {
    println!("pool threads {}", pool::threads());
    for &(m, n, k) in &[
        (1usize, 1024usize, 512usize),
        (1, 1024, 1024),
        (1, 512, 1024),
        (8, 1024, 1024),
    ] {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut o = vec![0f32; m * n];
        let mut t = Vec::with_capacity(2000);
        for _ in 0..2000 {
            let t0 = Instant::now();
            kernels::gemm(m, n, k, &a, &w, None, &mut o, Activation::Relu);
            t.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        t.sort_by(|a, b| a.total_cmp(b));
        println!(
            "gemm {m} x {n} x {k}: p50 {:.1} us, p90 {:.1} us",
            t[1000], t[1800]
        );
    }
}

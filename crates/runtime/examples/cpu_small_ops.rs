//! Latency of the small kernels a batch-1 forward is made of (the `mlp`
//! story's GEMVs: 1 × 1024 × 512, 1 × 1024 × 1024, 1 × 512 × 1024, and two
//! few-row GEMMs), called directly (no stream), to see what the intra-op
//! pool's fork-join costs. Two ways of splitting a kernel over the pool are
//! timed call by call in alternation (so a loaded machine's noise hits both):
//! the region in which the calling thread works (`pool::run`'s default) and
//! rayon's `install` (`BRAID_CPU_JOIN=rayon`); p50/p90 of 2000 calls each.
//! The pool size is `BRAID_CPU_THREADS`:
//! `cargo run --release -p braid-runtime --no-default-features --example cpu_small_ops`

use braid_runtime::backend::cpu::{kernels, pool};
use braid_runtime::Activation;
use std::time::Instant;

fn main() {
    println!("pool threads {}; p50 / p90 of 2000 calls each, the two modes alternating call by call", pool::threads());
    println!("| m x n x k | region p50 | region p90 | rayon install p50 | rayon install p90 | install p50 / region p50 |");
    println!("|---|---:|---:|---:|---:|---:|");
    for &(m, n, k) in &[(1usize, 1024usize, 512usize), (1, 1024, 1024), (1, 512, 1024), (4, 1024, 1024), (8, 1024, 1024)] {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut o = vec![0f32; m * n];
        let mut t = [Vec::with_capacity(2000), Vec::with_capacity(2000)];
        let mut first: [Option<Vec<f32>>; 2] = [None, None];
        for it in 0..4000 {
            let mode = it % 2;
            pool::set_rayon_join(mode == 1);
            let t0 = Instant::now();
            kernels::gemm(m, n, k, &a, &w, None, &mut o, Activation::Relu);
            t[mode].push(t0.elapsed().as_secs_f64() * 1e6);
            if first[mode].is_none() {
                first[mode] = Some(o.clone());
            }
        }
        assert_eq!(first[0], first[1], "the two modes differ");
        for v in t.iter_mut() {
            v.sort_by(|a, b| a.total_cmp(b));
        }
        println!("| {m} x {n} x {k} | {:.1} us | {:.1} us | {:.1} us | {:.1} us | {:.2}x |", t[0][1000], t[0][1800], t[1][1000], t[1][1800], t[1][1000] / t[0][1000]);
    }
    pool::set_rayon_join(false);
    // Few rows: the dot-product path (what `gemm_weight` takes below
    // kernels::SMALL_M rows) against the packed tile (rows past m repeat the
    // last row: computed, not stored), alternating call by call.
    println!();
    println!("| m x 1024 x 1024 | dot path p50 | packed tile p50 | dot / packed |");
    println!("|---|---:|---:|---:|");
    let (n, k) = (1024usize, 1024usize);
    let w: Vec<f32> = (0..n * k).map(|i| ((i * 31 % 97) as f32 - 48.0) * 0.01).collect();
    let pw = braid_runtime::backend::cpu::packed::PackedWeights::pack(&w, n, k);
    for m in [1usize, 2, 3, 4, 6, 7] {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 17 % 89) as f32 - 44.0) * 0.01).collect();
        let (mut o1, mut o2) = (vec![0f32; m * n], vec![0f32; m * n]);
        let mut t = [Vec::with_capacity(1000), Vec::with_capacity(1000)];
        for it in 0..2000 {
            let t0 = Instant::now();
            if it % 2 == 0 {
                kernels::gemm(m, n, k, &a, &w, None, &mut o1, Activation::Relu);
            } else {
                kernels::gemm_packed(m, &a, &pw, None, &mut o2, Activation::Relu);
            }
            t[it % 2].push(t0.elapsed().as_secs_f64() * 1e6);
        }
        let rel = (o1.iter().zip(&o2).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>() / o1.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().max(1e-30)).sqrt();
        assert!(rel < 1e-5, "m {m}: the paths differ by {rel}");
        for v in t.iter_mut() {
            v.sort_by(|a, b| a.total_cmp(b));
        }
        println!("| {m} | {:.1} us | {:.1} us | {:.2}x |", t[0][500], t[1][500], t[0][500] / t[1][500]);
    }
}

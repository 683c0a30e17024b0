//! The CPU GEMM on the workloads' shapes: `matrixmultiply` on output blocks
//! (the unpacked path), the register-tiled kernel packing the weight on every
//! call, and the same kernel on a weight packed once ([`PackedWeights`]).
//! GFLOP/s, best of 5 windows taken round-robin; the pool size is `BRAID_CPU_THREADS`. Run:
//! `cargo run --release -p braid-runtime --no-default-features --example gemm_shapes [-- --quick]`
//! (once with `BRAID_CPU_THREADS=1`, once without, for single and all threads).

use braid_runtime::backend::cpu::kernels;
use braid_runtime::backend::cpu::packed::PackedWeights;
use braid_runtime::Activation;
use std::time::Instant;

/// GFLOP/s of each variant, best of 5 windows of ~40 ms taken round-robin
/// (variant 0, 1, 2, 0, 1, 2, ...), so load from other processes on a shared
/// machine falls on all of them alike.
fn gflops(m: usize, n: usize, k: usize, fs: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    let mut best = vec![0f64; fs.len()];
    for f in fs.iter_mut() {
        f();
    }
    for _ in 0..5 {
        for (f, b) in fs.iter_mut().zip(best.iter_mut()) {
            let (t0, mut reps) = (Instant::now(), 0u32);
            while t0.elapsed().as_secs_f64() < 0.04 {
                f();
                reps += 1;
            }
            *b = b.max(2.0 * (m * n * k) as f64 * reps as f64 / t0.elapsed().as_secs_f64() / 1e9);
        }
    }
    best
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let mut shapes = vec![];
    // MiniLM: rows = batch × tokens; q/k/v fused (1152), FFN up (1536) and down (k 1536).
    let ms: &[usize] = if quick {
        &[16, 128, 512, 2048]
    } else {
        &[1, 16, 128, 512, 2048, 16384]
    };
    for &m in ms {
        for &(n, k) in &[(384, 384), (1152, 384), (1536, 384), (384, 1536)] {
            shapes.push((m, n, k));
        }
    }
    // mlp story: batch × 1024 (k 512 first layer, 1024 after).
    for &(m, n, k) in &[
        (1, 1024, 512),
        (8, 1024, 1024),
        (64, 1024, 512),
        (256, 1024, 1024),
    ] {
        shapes.push((m, n, k));
    }
    println!(
        "pool threads {}, {}{}; GFLOP/s (best of 5, round-robin)",
        braid_runtime::backend::cpu::pool::threads(),
        kernels::simd_level(),
        if braid_runtime::backend::cpu::packed::use_avx512() {
            ", packed tile avx512f"
        } else {
            ""
        }
    );
    if std::env::args().any(|a| a == "--ab") {
        ab(&shapes);
        return;
    }
    println!("| m x n x k | matrixmultiply blocks | packed kernel, pack per call | prepacked | prepacked / matrixmultiply | max rel diff | prepacked output hash |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (m, n, k) in shapes {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 104729 % 997) as f32 / 498.5) - 1.0)
            .collect();
        let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
        let mut o1 = vec![0f32; m * n];
        let mut o2 = vec![0f32; m * n];
        let mut o3 = vec![0f32; m * n];
        let pw = PackedWeights::pack(&w, n, k);
        let g = gflops(
            m,
            n,
            k,
            &mut [
                &mut || kernels::gemm(m, n, k, &a, &w, Some(&b), &mut o1, Activation::None),
                &mut || {
                    let pw = PackedWeights::pack(&w, n, k);
                    kernels::gemm_packed(m, &a, &pw, Some(&b), &mut o2, Activation::None)
                },
                &mut || kernels::gemm_packed(m, &a, &pw, Some(&b), &mut o3, Activation::None),
            ],
        );
        let (g1, g2, g3) = (g[0], g[1], g[2]);
        let (mut num, mut den) = (0f64, 0f64);
        for (x, y) in o1.iter().zip(&o3) {
            num += ((x - y) as f64).powi(2);
            den += (*x as f64).powi(2);
        }
        // FNV-1a over the output bits: equal across kernels (AVX2, AVX-512) and
        // pool sizes when the arithmetic is the same.
        let hash = o3.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| {
            (h ^ v.to_bits() as u64).wrapping_mul(0x100_0000_01b3)
        });
        println!(
            "| {m} x {n} x {k} | {g1:.1} | {g2:.1} | {g3:.1} | {:.2}x | {:.1e} | {hash:016x} |",
            g3 / g1,
            (num / den).sqrt()
        );
    }
}

/// `--ab`: the prepacked GEMM under its A/B knobs, round-robin in one
/// process (so a noisy host's load falls on every variant alike): the
/// default (balanced split, k-blocking), k-blocking off, the round-3 split
/// (`traffic`), both of those (round 3's loop with this session's tile),
/// and the makespan-only split. Outputs must hash the same: neither knob
/// changes the arithmetic.
fn ab(shapes: &[(usize, usize, usize)]) {
    use braid_runtime::backend::cpu::packed::set_k_blocking;
    let variants: [(&str, usize, bool); 5] = [("default", 0, true), ("kblock off", 0, false), ("split traffic", 1, true), ("traffic + kblock off", 1, false), ("split makespan", 2, true)];
    println!("| m x n x k | {} | same bits |", variants.iter().map(|v| v.0).collect::<Vec<_>>().join(" | "));
    println!("|---|{}---|", "---:|".repeat(variants.len()));
    for &(m, n, k) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 104729 % 997) as f32 / 498.5) - 1.0).collect();
        let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
        let pw = PackedWeights::pack(&w, n, k);
        let mut outs: Vec<Vec<f32>> = variants.iter().map(|_| vec![0f32; m * n]).collect();
        let mut fs: Vec<Box<dyn FnMut() + '_>> = Vec::new();
        for (v, o) in variants.iter().zip(outs.iter_mut()) {
            let (pw, a, b) = (&pw, &a, &b);
            let (split, kb) = (v.1, v.2);
            fs.push(Box::new(move || {
                kernels::set_split_mode(split);
                set_k_blocking(kb);
                kernels::gemm_packed(m, a, pw, Some(b), o, Activation::None)
            }));
        }
        let mut refs: Vec<&mut dyn FnMut()> = fs.iter_mut().map(|f| &mut **f as &mut dyn FnMut()).collect();
        let g = gflops(m, n, k, &mut refs);
        drop(refs);
        drop(fs);
        let same = outs.iter().all(|o| o.iter().zip(&outs[0]).all(|(x, y)| x.to_bits() == y.to_bits()));
        println!("| {m} x {n} x {k} | {} | {} |", g.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(" | "), if same { "yes" } else { "NO" });
    }
    kernels::set_split_mode(0);
    set_k_blocking(true);
}

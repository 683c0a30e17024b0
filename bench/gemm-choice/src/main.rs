// Which GEMM for the CPU backend: matrixmultiply on one thread, matrixmultiply on
// output blocks over rayon (what braid does), and the `gemm` crate (candle's) on one
// thread and with Parallelism::Rayon, in GFLOP/s on the workloads' shapes. A
// standalone crate (its own workspace): cd bench/gemm-choice && cargo run --release
// out[m,n] = a[m,k] · w[n,k]^T, f32; matrixmultiply (1 thread, and row/col blocks on rayon) vs gemm crate (Parallelism::Rayon).
use std::time::Instant;
fn mm(m: usize, n: usize, k: usize, a: &[f32], w: &[f32], o: &mut [f32]) {
    unsafe { matrixmultiply::sgemm(m, k, n, 1.0, a.as_ptr(), k as isize, 1, w.as_ptr(), 1, k as isize, 0.0, o.as_mut_ptr(), n as isize, 1) }
}
#[derive(Clone, Copy)] struct P(*mut f32); unsafe impl Send for P {} unsafe impl Sync for P {}
impl P { fn p(self) -> *mut f32 { self.0 } }
fn mm_par(m: usize, n: usize, k: usize, a: &[f32], w: &[f32], o: &mut [f32], t: usize) {
    use rayon::prelude::*;
    let mt = (m / 64).clamp(1, t); let nt = (t / mt).clamp(1, n.div_ceil(64));
    let op = P(o.as_mut_ptr());
    (0..mt * nt).into_par_iter().for_each(|i| {
        let per_m = m.div_ceil(mt).div_ceil(8) * 8; let per_n = n.div_ceil(nt).div_ceil(16) * 16;
        let (r0, r1) = (((i / nt) * per_m).min(m), ((i / nt + 1) * per_m).min(m));
        let (c0, c1) = (((i % nt) * per_n).min(n), ((i % nt + 1) * per_n).min(n));
        if r0 < r1 && c0 < c1 { unsafe { matrixmultiply::sgemm(r1 - r0, k, c1 - c0, 1.0, a.as_ptr().add(r0 * k), k as isize, 1, w.as_ptr().add(c0 * k), 1, k as isize, 0.0, op.p().add(r0 * n + c0), n as isize, 1) } }
    });
}
fn gm(m: usize, n: usize, k: usize, a: &[f32], w: &[f32], o: &mut [f32], par: gemm::Parallelism) {
    unsafe { gemm::gemm(m, n, k, o.as_mut_ptr(), 1, n as isize, false, a.as_ptr(), 1, k as isize, w.as_ptr(), k as isize, 1, 0.0, 1.0, false, false, false, par) }
}
fn time(mut f: impl FnMut()) -> f64 { f(); let mut best = f64::MAX; for _ in 0..5 { let t = Instant::now(); let mut n = 0; while t.elapsed().as_secs_f64() < 0.15 { f(); n += 1; } best = best.min(t.elapsed().as_secs_f64() / n as f64); } best }
fn main() {
    let t = std::thread::available_parallelism().unwrap().get();
    println!("threads {t}; GFLOP/s (best of 5)");
    println!("| m x n x k | mm 1 thread | mm blocks on rayon | gemm crate 1 thread | gemm crate rayon |");
    println!("|---|---:|---:|---:|---:|");
    for &(m, n, k) in &[(1, 1024, 512), (8, 1024, 1024), (64, 1024, 512), (256, 1024, 1024), (128, 384, 384), (128, 1536, 384), (128, 384, 1536), (4096, 1536, 384)] {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut o = vec![0f32; m * n];
        let fl = 2.0 * (m * n * k) as f64 / 1e9;
        let r1 = fl / time(|| mm(m, n, k, &a, &w, &mut o));
        let r2 = fl / time(|| mm_par(m, n, k, &a, &w, &mut o, 4 * t));
        let r3 = fl / time(|| gm(m, n, k, &a, &w, &mut o, gemm::Parallelism::None));
        let r4 = fl / time(|| gm(m, n, k, &a, &w, &mut o, gemm::Parallelism::Rayon(t)));
        println!("| {m} x {n} x {k} | {r1:.1} | {r2:.1} | {r3:.1} | {r4:.1} |");
    }
}

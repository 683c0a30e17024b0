//! The CPU backend's shared intra-op pool under many streams: 16 streams each
//! run large GEMMs at once (big enough to be split over the pool), every
//! result bitwise equal to the same GEMM run alone, and the process holds no
//! more pool threads than the pool size (16 streams did not start 16 threads
//! each). Linux only for the thread count (it reads /proc/self/task).
#![cfg(not(loom))]

use braid_runtime::backend::cpu::{pool, CpuBackend};
use braid_runtime::backend::{Activation, Backend, BufSlice, DType, Gemm};

fn run_gemm(be: &CpuBackend, s: &dyn braid_runtime::backend::BackendStream, m: usize, n: usize, k: usize, a: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (pa, pw, pb, po) = (be.alloc(a.len() * 4).unwrap(), be.alloc(w.len() * 4).unwrap(), be.alloc(b.len() * 4).unwrap(), be.alloc(m * n * 4).unwrap());
    let mut out = vec![0u8; m * n * 4];
    // SAFETY: every pointer was allocated above with the sizes the descriptor
    // names and is freed only after the synchronizing d2h below.
    let (pa, pw, pb, po) = (BufSlice::whole(pa, a.len() * 4), BufSlice::whole(pw, w.len() * 4), BufSlice::whole(pb, b.len() * 4), BufSlice::whole(po, m * n * 4));
    unsafe {
        s.h2d(&bytes(a), pa).unwrap();
        s.h2d(&bytes(w), pw).unwrap();
        s.h2d(&bytes(b), pb).unwrap();
        s.gemm(&Gemm { m, n, k, a: pa, w: pw, bias: Some(pb), out: po, act: Activation::GeluErf, dtype: DType::F32 }).unwrap();
        s.d2h(po, &mut out).unwrap();
        for (p, len) in [(pa, a.len() * 4), (pw, w.len() * 4), (pb, b.len() * 4), (po, m * n * 4)] {
            be.free(p.buffer, len);
        }
    }
    out.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn sixteen_streams_share_one_pool_and_match_serial() {
    let be = std::sync::Arc::new(CpuBackend::new());
    let (m, n, k) = (96, 200, 160); // 3M multiply-adds: split over the pool
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0).collect();
    let b: Vec<f32> = (0..n).map(|i| i as f32 / n as f32).collect();
    let s0 = be.new_stream().unwrap();
    let serial = run_gemm(&be, &*s0, m, n, k, &a, &w, &b);
    assert!(serial.iter().all(|v| v.is_finite()));
    std::thread::scope(|sc| {
        for _ in 0..16 {
            let (be, a, w, b, serial) = (be.clone(), &a, &w, &b, &serial);
            sc.spawn(move || {
                let s = be.new_stream().unwrap();
                for _ in 0..5 {
                    let got = run_gemm(&be, &*s, m, n, k, a, w, b);
                    assert!(got.iter().zip(serial.iter()).all(|(x, y)| x.to_bits() == y.to_bits()), "a concurrent GEMM differs from the serial one");
                }
            });
        }
    });
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        let pool_threads = tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|c| c.trim_end().starts_with("braid-pool-"))
            .count();
        eprintln!("pool size {}, pool threads alive {pool_threads}", pool::threads());
        assert!(pool_threads <= pool::threads(), "{pool_threads} pool threads for a pool of {}", pool::threads());
    } else {
        eprintln!("SKIPPED (thread count: no /proc/self/task on this OS)");
    }
}

/// The pool's fork-join (`pool::run` from threads outside the pool, where the
/// caller claims tasks too): 8 threads at once each run regions of 2..200
/// tasks; every task runs exactly once and its write is seen by the caller
/// when `run` returns.
#[test]
fn regions_from_many_threads_run_every_task_once() {
    use std::sync::atomic::{AtomicU32, Ordering};
    std::thread::scope(|sc| {
        for t in 0..8usize {
            sc.spawn(move || {
                for round in 0..200usize {
                    let n = 2 + (round * 7 + t * 13) % 199;
                    let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
                    let plain = std::sync::Mutex::new(vec![0u32; n]);
                    pool::run(n, |i| {
                        // Relaxed: `run` returning orders the tasks before the checks.
                        hits[i].fetch_add(1, Ordering::Relaxed);
                        plain.lock().unwrap()[i] = i as u32 + 1;
                    });
                    assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "a task ran other than once (n = {n})");
                    assert!(plain.into_inner().unwrap().iter().enumerate().all(|(i, &v)| v == i as u32 + 1));
                }
            });
        }
    });
}

/// A task that panics: `pool::run` re-raises the panic on the caller (the
/// stream's executor reports it as an error) once the other tasks are done,
/// and the pool keeps working afterwards.
#[test]
fn a_task_panic_reaches_the_caller() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let ran = AtomicU32::new(0);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool::run(64, |i| {
            if i == 37 {
                panic!("task 37 fails");
            }
            // Relaxed: read after `run` returned (unwound).
            ran.fetch_add(1, Ordering::Relaxed);
        })
    }));
    let msg = r.expect_err("the panic was lost");
    assert_eq!(msg.downcast_ref::<&str>().copied(), Some("task 37 fails"));
    assert_eq!(ran.load(Ordering::Relaxed), 63, "the other tasks did not all run");
    let again = AtomicU32::new(0);
    pool::run(64, |_| {
        again.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(again.load(Ordering::Relaxed), 64);
}

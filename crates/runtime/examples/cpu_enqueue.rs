//! What an enqueue on an idle CPU stream costs: the round trip of one empty
//! host function (enqueue, the executor picks it up, synchronize returns),
//! with the stream idle between trips (so the executor has parked, or is
//! spinning), and the enqueue call alone. Run:
//! `cargo run --release -p braid-runtime --no-default-features --example cpu_enqueue`

use braid_runtime::backend::cpu::CpuBackend;
use braid_runtime::backend::Backend;
use std::time::{Duration, Instant};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p) as usize]
}

fn main() -> braid_runtime::Result<()> {
    let be = CpuBackend::new();
    let s = be.new_stream()?;
    let n = 2000;
    for (label, gap) in [("back-to-back", Duration::ZERO), ("idle 1 ms between", Duration::from_millis(1))] {
        let mut trip = Vec::with_capacity(n);
        let mut enq = Vec::with_capacity(n);
        for _ in 0..n {
            if !gap.is_zero() {
                std::thread::sleep(gap);
            }
            let t0 = Instant::now();
            s.host_fns().expect("this backend runs host functions").host_fn(Box::new(|| {}))?;
            let t1 = Instant::now();
            s.synchronize()?;
            let t2 = Instant::now();
            enq.push((t1 - t0).as_secs_f64() * 1e6);
            trip.push((t2 - t0).as_secs_f64() * 1e6);
        }
        println!(
            "{label}: enqueue p50 {:.2} us; enqueue+run+synchronize p50 {:.1} us, p90 {:.1} us, p99 {:.1} us ({n} trips)",
            pct(&mut enq, 0.5),
            pct(&mut trip, 0.5),
            pct(&mut trip, 0.9),
            pct(&mut trip, 0.99)
        );
    }
    Ok(())
}

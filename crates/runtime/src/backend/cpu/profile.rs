//! An opt-in per-op profile of the CPU backend (`BRAID_CPU_PROFILE=1`).
//!
//! Owns process-wide diagnostics only; nothing here changes what a kernel
//! computes. With the variable set, every stream job is timed on its executor
//! (wall time from its start to its end, the intra-op pool's work inside it
//! included) and summed per op and shape; GEMMs also count their
//! multiply-adds, so the table shows GFLOP/s per weight shape. Without it, a
//! job pays one cached boolean load. `braid` prints [`report`] on exit when
//! the variable is set. This is how the 16-core host, which has no `perf`,
//! says where a forward's time goes.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Whether `BRAID_CPU_PROFILE` asks for the profile.
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    // 0 and 1 are the values a device accepts (`config::check_cpu_knobs`).
    *ON.get_or_init(|| std::env::var("BRAID_CPU_PROFILE").is_ok_and(|v| v.trim() == "1"))
}

#[derive(Default)]
struct Row {
    count: u64,
    took: Duration,
    flops: f64,
}

fn table() -> &'static Mutex<BTreeMap<(&'static str, String), Row>> {
    static T: OnceLock<Mutex<BTreeMap<(&'static str, String), Row>>> = OnceLock::new();
    T.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// Times one job when profiling: call [`Timer::stop`] when it ends.
pub(crate) struct Timer(Option<Instant>);

impl Timer {
    pub(crate) fn start() -> Timer {
        Timer(enabled().then(Instant::now))
    }
    /// Add the job to the table as `op` (`detail`: its shape class), with
    /// `flops` floating-point operations (0 where not counted).
    pub(crate) fn stop(self, op: &'static str, detail: impl FnOnce() -> String, flops: f64) {
        if let Some(t0) = self.0 {
            let took = t0.elapsed();
            let mut t = crate::sync_std_lock(table());
            let row = t.entry((op, detail())).or_default();
            row.count += 1;
            row.took += took;
            row.flops += flops;
        }
    }
}

/// The per-op table (count, total and mean wall time, share, GFLOP/s), as
/// Markdown; `None` if nothing was profiled.
pub fn report() -> Option<String> {
    let t = crate::sync_std_lock(table());
    if t.is_empty() {
        return None;
    }
    let total: Duration = t.values().map(|r| r.took).sum();
    let mut s = String::from("cpu op profile (BRAID_CPU_PROFILE: wall time of each stream job on its executor, pool work included)\n");
    s += "| op | shape | count | total ms | mean us | share | GFLOP/s |\n| --- | --- | ---: | ---: | ---: | ---: | ---: |\n";
    let mut rows: Vec<_> = t.iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1.took));
    for ((op, detail), r) in rows {
        let secs = r.took.as_secs_f64();
        let gflops = if r.flops > 0.0 { format!("{:.1}", r.flops / secs.max(1e-12) / 1e9) } else { "-".into() };
        s += &format!("| {op} | {detail} | {} | {:.1} | {:.1} | {:.1}% | {gflops} |\n", r.count, secs * 1e3, secs * 1e6 / r.count as f64, 100.0 * secs / total.as_secs_f64().max(1e-12));
    }
    s += &format!("total {:.1} ms in {} jobs\n", total.as_secs_f64() * 1e3, t.values().map(|r| r.count).sum::<u64>());
    Some(s)
}

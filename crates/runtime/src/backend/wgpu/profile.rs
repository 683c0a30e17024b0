//! Host-path counters of the wgpu backend, and an opt-in per-kernel profile.
//!
//! Owns process-wide diagnostics only; nothing here changes what the backend
//! computes. The counters (dispatches, queue submissions, blocking waits,
//! bind groups and staging buffers created, uniform buffers created) are
//! always on: one relaxed atomic add each. With `BRAID_WGPU_PROFILE=1` every
//! kernel is additionally submitted and waited for on its own, and the wall
//! time of each entry point is summed: that serialises the device, so a
//! profiled run is slower than a normal one, but it tells which kernels the
//! time goes to. [`report`] formats both (`braid` prints it on exit when the
//! variable is set).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// One process-wide counter. Relaxed everywhere: each is an independent
/// statistic read only for reporting; no other memory is published by it.
pub(crate) struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    pub(crate) fn add(&self, n: u64) {
        // Relaxed: a statistic, see the type's docs.
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        // Relaxed: a statistic, see the type's docs.
        self.0.load(Ordering::Relaxed)
    }
}

pub(crate) static DISPATCHES: Counter = Counter::new();
pub(crate) static SUBMITS: Counter = Counter::new();
pub(crate) static WAITS: Counter = Counter::new();
pub(crate) static BIND_GROUPS: Counter = Counter::new();
pub(crate) static UNIFORM_BUFFERS: Counter = Counter::new();
pub(crate) static STAGING_BUFFERS: Counter = Counter::new();

/// The counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Kernels dispatched.
    pub dispatches: u64,
    /// Queue submissions (command buffers handed to the device).
    pub submits: u64,
    /// Blocking waits on the device (`poll(Wait)`).
    pub waits: u64,
    /// Bind groups created (a cache miss; hits create none).
    pub bind_groups: u64,
    /// Uniform buffers created for kernel parameters (0 where the adapter
    /// has immediates).
    pub uniform_buffers: u64,
    /// Staging buffers created for uploads and read-backs.
    pub staging_buffers: u64,
}

/// The counters now (all wgpu devices of the process together).
pub fn counters() -> Counters {
    Counters {
        dispatches: DISPATCHES.get(),
        submits: SUBMITS.get(),
        waits: WAITS.get(),
        bind_groups: BIND_GROUPS.get(),
        uniform_buffers: UNIFORM_BUFFERS.get(),
        staging_buffers: STAGING_BUFFERS.get(),
    }
}

/// Whether `BRAID_WGPU_PROFILE` asks for the per-kernel profile.
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("BRAID_WGPU_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0"))
}

fn table() -> &'static Mutex<BTreeMap<(&'static str, &'static str), (u64, Duration)>> {
    static T: OnceLock<Mutex<BTreeMap<(&'static str, &'static str), (u64, Duration)>>> = OnceLock::new();
    T.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// Add one timed kernel (profile mode).
pub(crate) fn record(file: &'static str, entry: &'static str, took: Duration) {
    let mut t = crate::sync_std_lock(table());
    match t.get_mut(&(file, entry)) {
        Some(e) => {
            e.0 += 1;
            e.1 += took;
        }
        // The first run of an entry point is not counted: drivers (lavapipe,
        // NVIDIA) compile the pipeline lazily at first use.
        None => {
            t.insert((file, entry), (0, Duration::ZERO));
        }
    }
}

/// The counters, and with `BRAID_WGPU_PROFILE` the per-kernel table
/// (count, total and mean wall time, share), as text; `None` if no wgpu
/// work ran.
pub fn report() -> Option<String> {
    let c = counters();
    if c.dispatches == 0 && c.submits == 0 {
        return None;
    }
    let mut s = format!(
        "wgpu host path: {} dispatches, {} submits, {} blocking waits, {} bind groups created, {} uniform buffers created, {} staging buffers\n",
        c.dispatches, c.submits, c.waits, c.bind_groups, c.uniform_buffers, c.staging_buffers
    );
    let t = crate::sync_std_lock(table());
    if !t.is_empty() {
        let total: Duration = t.values().map(|v| v.1).sum();
        s += "wgpu kernel profile (BRAID_WGPU_PROFILE: each kernel submitted and waited for alone; first run of each not counted)\n";
        s += "| kernel | count | total ms | mean us | share |\n| --- | ---: | ---: | ---: | ---: |\n";
        let mut rows: Vec<_> = t.iter().collect();
        rows.sort_by(|a, b| b.1 .1.cmp(&a.1 .1));
        for ((file, entry), (n, d)) in rows.into_iter().filter(|r| r.1 .0 > 0) {
            s += &format!("| {file}/{entry} | {n} | {:.1} | {:.1} | {:.1}% |\n", d.as_secs_f64() * 1e3, d.as_secs_f64() * 1e6 / *n as f64, 100.0 * d.as_secs_f64() / total.as_secs_f64().max(1e-12));
        }
    }
    Some(s)
}

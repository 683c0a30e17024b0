//! The CPU backend's intra-op thread pool: one `rayon` pool per process,
//! shared by every CPU stream, sized to the cores (or `BRAID_CPU_THREADS`).
//! Owns the pool, its size, and the rule for when a kernel is split into
//! tasks at all.
//!
//! Why rayon: it is the maintained, widely used work-stealing pool of the Rust
//! ecosystem (tokenizers, candle, polars use it). A stream thread that splits
//! a kernel claims its tasks itself and starts up to `threads − 1` pool
//! helpers ([`super::region`]), so one kernel uses as many threads as the
//! pool has, and however many streams submit work at once, no thread is
//! started (16 streams do not start 16 threads each; the streams' own
//! threads and the pool's share the cores); a stream with small work runs it
//! inline without touching the pool at all.
//!
//! Determinism: how a kernel is split depends only on the operand shapes and
//! on the pool size, and every kernel computes each output element with the
//! same arithmetic in the same order whichever task computes it, so results
//! are bitwise reproducible for a given pool size (and in practice for any
//! pool size; the documented promise is the former).

use super::region::{Region, TaskFn};
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();

/// The number of threads the pool was (or will be) built with:
/// `BRAID_CPU_THREADS` if it is a positive integer, else the hardware threads.
fn wanted_threads() -> usize {
    std::env::var("BRAID_CPU_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

fn pool() -> Option<&'static rayon::ThreadPool> {
    POOL.get_or_init(|| {
        let n = wanted_threads();
        if n <= 1 {
            return None;
        }
        // A pool that cannot start (thread limit) leaves the kernels serial,
        // which is correct, only slower.
        rayon::ThreadPoolBuilder::new().num_threads(n).thread_name(|i| format!("braid-pool-{i}")).build().ok()
    })
    .as_ref()
}

/// Threads the kernels may use at once (1 when there is no pool).
pub fn threads() -> usize {
    pool().map_or(1, |p| p.current_num_threads())
}

/// Below this many multiply-adds (or element visits, for the memory-bound
/// kernels) a kernel runs inline on the stream's thread: handing work to the
/// pool and waiting for it costs a few microseconds, more than the work.
pub const PAR_MIN_WORK: usize = 1 << 16;

/// How many tasks to split `work` units into: 1 when small or when there is
/// no pool, else up to `4 × threads` (for load balance), each at least
/// [`PAR_MIN_WORK`].
pub fn tasks_for(work: usize) -> usize {
    let t = threads();
    if t <= 1 || work < 2 * PAR_MIN_WORK {
        return 1;
    }
    (work / PAR_MIN_WORK).clamp(1, 4 * t)
}

/// Run `f(0..n)` — on the pool when `n > 1`, inline otherwise. Tasks may run
/// in any order and concurrently; `f` must write disjoint outputs. A panic
/// of a task is re-raised here once every task has ended.
///
/// From a thread outside the pool (a stream's executor) this is a
/// [`Region`] in which the caller claims tasks too, with up to `threads − 1`
/// pool helpers (so as many threads compute as the pool has); from inside the
/// pool, or with `BRAID_CPU_JOIN=rayon` (kept for A/B runs), rayon's
/// `install`, where the caller sleeps while the pool works.
pub fn run(n: usize, f: impl Fn(usize) + Sync + Send) {
    match pool() {
        Some(p) if n > 1 => {
            if rayon_join() || p.current_thread_index().is_some() {
                p.install(|| (0..n).into_par_iter().for_each(&f))
            } else {
                fork_join(p, n, &f)
            }
        }
        _ => (0..n).for_each(f),
    }
}

/// 0: not read yet; 1: region; 2: rayon `install`.
static JOIN: AtomicUsize = AtomicUsize::new(0);

/// `BRAID_CPU_JOIN=rayon`: every split kernel goes through rayon's `install`
/// (the round-2 behaviour), for A/B runs (read once).
fn rayon_join() -> bool {
    // Relaxed: a mode flag; each value is valid on its own and nothing else
    // is published through it.
    match JOIN.load(Ordering::Relaxed) {
        0 => {
            let rayon = std::env::var("BRAID_CPU_JOIN").is_ok_and(|v| v.trim() == "rayon");
            let _ = JOIN.compare_exchange(0, if rayon { 2 } else { 1 }, Ordering::Relaxed, Ordering::Relaxed);
            JOIN.load(Ordering::Relaxed) == 2
        }
        v => v == 2,
    }
}

/// Switch between the region (false) and rayon's `install` (true) at run
/// time: for in-process A/B benchmarks (`examples/cpu_small_ops.rs`), which
/// alternate the two call by call so a loaded machine's noise hits both.
#[doc(hidden)]
pub fn set_rayon_join(on: bool) {
    // Relaxed: as in `rayon_join`.
    JOIN.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

/// A region and how many more helpers may still be started for it.
struct Shared {
    region: Region,
    spawn_left: AtomicUsize,
}

impl Shared {
    /// Start up to two more helpers (a helper starts two more, and so on: the
    /// wake-ups happen in parallel, not one after another on the caller).
    fn spread(self: &Arc<Self>, p: &'static rayon::ThreadPool, f: TaskFn) {
        for _ in 0..2 {
            // Relaxed: a counter of helpers to start; nothing is published
            // through it (each helper gets the region through its Arc).
            let took = self.spawn_left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1)).is_ok();
            if !took || !self.region.has_work() {
                return;
            }
            let me = self.clone();
            p.spawn(move || {
                me.spread(p, f);
                // SAFETY: `fork_join` keeps the function live until its
                // `wait` returned (Region::work's contract).
                unsafe { me.region.work(f) }
            });
        }
    }
}

fn fork_join(p: &'static rayon::ThreadPool, n: usize, f: &(dyn Fn(usize) + Sync)) {
    let shared = Arc::new(Shared { region: Region::new(n), spawn_left: AtomicUsize::new((n - 1).min(p.current_num_threads() - 1)) });
    // SAFETY: only the lifetime is erased. The pointer is dereferenced only
    // by `Region::work` for a claimed task, and this function returns only
    // after `wait` saw every claimed task finish (`work` catches task panics,
    // so nothing unwinds past the wait).
    let fp = TaskFn(unsafe { std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync + 'static)>(f) });
    shared.spread(p, fp);
    // SAFETY: as above: `f` is live until the wait below returns.
    unsafe { shared.region.work(fp) };
    if let Some(panic) = shared.region.wait(super::spin_limit()) {
        std::panic::resume_unwind(panic);
    }
}

/// `[lo, hi)` of chunk `i` when `len` items are split into `n` near-equal
/// chunks whose boundaries are multiples of `align` (the last takes the rest).
pub fn chunk(len: usize, n: usize, i: usize, align: usize) -> (usize, usize) {
    let per = len.div_ceil(n.max(1)).div_ceil(align.max(1)) * align.max(1);
    let lo = (i * per).min(len);
    let hi = ((i + 1) * per).min(len);
    (lo, hi)
}

/// A raw pointer that tasks writing disjoint parts of one output may share.
#[derive(Clone, Copy)]
pub struct SendPtr(pub *mut f32);

impl SendPtr {
    /// The address (a method, so closures capture the `Send` wrapper, not
    /// the bare pointer field).
    #[inline(always)]
    pub fn ptr(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: it is only dereferenced by tasks that write disjoint elements (each
// use site says which), while the owning slice is borrowed mutably by the
// kernel that spawned them and outlives them (`run` returns after all tasks).
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

//! The CPU backend's intra-op thread pool: one `rayon` pool per process,
//! shared by every CPU stream, sized to the cores (or `BRAID_CPU_THREADS`).
//! Owns the pool, its size, and the rule for when a kernel is split into
//! tasks at all.
//!
//! Why rayon: it is the maintained, widely used work-stealing pool of the Rust
//! ecosystem (tokenizers, candle, polars use it); calling `install` from a
//! stream thread that is not in the pool injects the tasks and blocks that
//! thread, so however many streams submit work at once, only the pool's
//! threads compute (16 streams do not start 16 threads each), and a stream
//! with small work runs it inline without touching the pool at all.
//!
//! Determinism: how a kernel is split depends only on the operand shapes and
//! on the pool size, and every kernel computes each output element with the
//! same arithmetic in the same order whichever task computes it, so results
//! are bitwise reproducible for a given pool size (and in practice for any
//! pool size; the documented promise is the former).

use rayon::prelude::*;
use std::sync::OnceLock;

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
/// in any order and concurrently; `f` must write disjoint outputs.
pub fn run(n: usize, f: impl Fn(usize) + Sync + Send) {
    match pool() {
        Some(p) if n > 1 => p.install(|| (0..n).into_par_iter().for_each(&f)),
        _ => (0..n).for_each(f),
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

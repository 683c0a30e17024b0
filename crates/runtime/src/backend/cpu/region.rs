//! One fork-join region of the intra-op pool in which the calling thread
//! works too: `n` tasks are claimed one at a time from a shared counter by the
//! caller (a stream's executor) and by whichever pool helpers have started;
//! the caller then waits, spinning briefly and then sleeping, until every
//! claimed task has finished. Owns that claim/finish/wake handshake; written
//! against `crate::sync` so the loom model (`tests/loom.rs`,
//! `cpu_region_runs_every_task_once`) checks this code.
//!
//! Why not `rayon::ThreadPool::install`: a caller outside the pool blocks on a
//! condition variable there at once and is woken by a futex call when the last
//! task ends (tens of µs on a VM, per kernel), and the work starts only once a
//! pool thread has woken up. Here the caller starts on the tasks at once, so a
//! kernel costs no wake-up when the pool is slow to come, and the caller
//! sleeps only when other threads still run the last tasks after its spin.
//!
//! A helper that starts after every task was claimed only reads the counter
//! and leaves: it never calls the task function, which may be gone by then
//! (it borrows the caller's stack); the region itself lives in an `Arc`.

use crate::sync::{self, AtomicUsize, Condvar, Mutex, Ordering};
use std::any::Any;

/// The task function of a region, as a raw pointer a helper may hold after
/// the function is gone (it is called only for a claimed task).
#[derive(Clone, Copy)]
pub struct TaskFn(pub *const (dyn Fn(usize) + Sync));

// SAFETY: the pointee is `Sync` (shared calls from several threads are
// allowed), and `Region::work`'s contract says when it may be dereferenced.
unsafe impl Send for TaskFn {}
// SAFETY: as above.
unsafe impl Sync for TaskFn {}

pub struct Region {
    n: usize,
    /// The next task index to hand out (values ≥ n: none left).
    next: AtomicUsize,
    /// Tasks finished.
    done: AtomicUsize,
    /// The first panic of a task (re-raised by the caller); also the lock
    /// the sleeping caller and the last finisher meet on.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    cv: Condvar,
}

impl Region {
    pub fn new(n: usize) -> Self {
        Region { n, next: AtomicUsize::new(0), done: AtomicUsize::new(0), panic: Mutex::new(None), cv: Condvar::new() }
    }

    /// Claim and run tasks until none is left.
    ///
    /// # Safety
    /// `f` points at a live function from the moment the region is shared
    /// until [`Region::wait`] has returned on it (every claimed task has then
    /// finished, and later calls claim nothing, so never dereference it).
    pub unsafe fn work(&self, f: TaskFn) {
        loop {
            // Relaxed: the claim needs only the atomicity of the increment
            // (each index is handed out once); what a task reads was written
            // before the region was shared (ordered by the spawn itself).
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.n {
                return;
            }
            // SAFETY: task i < n is claimed and not finished, so `wait` has not
            // returned and `f` is live (this function's contract).
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe { (*f.0)(i) }));
            if let Err(p) = r {
                sync::lock(&self.panic).get_or_insert(p);
            }
            // Release: the caller's Acquire load that reads n sees every
            // task's writes (each increment is a release; the increments form
            // one release sequence).
            if self.done.fetch_add(1, Ordering::Release) + 1 == self.n {
                // Under the lock, so a caller that checked `done` under the
                // lock and went to sleep is asleep when this notifies.
                let _g = sync::lock(&self.panic);
                self.cv.notify_all();
            }
        }
    }

    /// Whether a task is still unclaimed.
    pub fn has_work(&self) -> bool {
        // Relaxed: a hint (starting a helper that then finds nothing is harmless).
        self.next.load(Ordering::Relaxed) < self.n
    }

    /// Wait (spinning up to `spin` first) until all `n` tasks have finished;
    /// returns the first task panic, if any.
    pub fn wait(&self, spin: std::time::Duration) -> Option<Box<dyn Any + Send>> {
        // Acquire: pairs with the tasks' Release increments (their outputs
        // are visible once the count reads n).
        if !spin.is_zero() {
            super::progress::spin_until(spin, || self.done.load(Ordering::Acquire) >= self.n);
        }
        let mut g = sync::lock(&self.panic);
        // Acquire: as above.
        while self.done.load(Ordering::Acquire) < self.n {
            g = sync::wait(&self.cv, g);
        }
        g.take()
    }
}

//! How far a CPU stream's executor has got: the count of finished jobs, the
//! first error since the last wait, and the wake-up of waiters. Owns the
//! handshake between the executor thread (which calls [`Progress::complete`])
//! and `synchronize` (which calls [`Progress::wait_until`]); written against
//! `crate::sync` so the loom model (`tests/loom.rs`,
//! `cpu_progress_wait_sees_every_completion`) checks this code.
//!
//! A waiter first spins for a short while on an atomic copy of the count
//! (a finished job is then seen without a futex wake-up, which costs tens of
//! microseconds), then sleeps on the condition variable.

use crate::error::{Error, Result};
use crate::sync::{self, AtomicU64, Condvar, Mutex, Ordering};

struct State {
    completed: u64,
    error: Option<Error>,
}

pub struct Progress {
    /// A copy of `state.completed`, written under the lock, read without it.
    done: AtomicU64,
    state: Mutex<State>,
    cv: Condvar,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    pub fn new() -> Self {
        Progress { done: AtomicU64::new(0), state: Mutex::new(State { completed: 0, error: None }), cv: Condvar::new() }
    }

    /// One more job has finished, with this result.
    pub fn complete(&self, r: Result<()>) {
        let mut g = sync::lock(&self.state);
        g.completed += 1;
        if let Err(e) = r {
            g.error.get_or_insert(e);
        }
        // Release: a waiter that reads this count with Acquire also sees the
        // job's writes (its outputs) and the error stored above.
        self.done.store(g.completed, Ordering::Release);
        drop(g);
        self.cv.notify_all();
    }

    /// Jobs finished so far.
    pub fn completed(&self) -> u64 {
        // Acquire: pairs with the Release in `complete`, so a caller that sees
        // the count also sees those jobs' outputs.
        self.done.load(Ordering::Acquire)
    }

    /// Wait until `target` jobs have finished (spinning up to `spin` first);
    /// returns and clears the first error raised since the last wait.
    pub fn wait_until(&self, target: u64, spin: std::time::Duration) -> Result<()> {
        if self.completed() < target && !spin.is_zero() {
            spin_until(spin, || self.completed() >= target);
        }
        let mut g = sync::lock(&self.state);
        while g.completed < target {
            g = sync::wait(&self.cv, g);
        }
        match g.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Spin (with the CPU's spin-loop hint) until `ready()` or `limit` passes;
/// returns whether it became ready. Under loom, one check (loom explores the
/// interleavings instead).
pub fn spin_until(limit: std::time::Duration, mut ready: impl FnMut() -> bool) -> bool {
    #[cfg(loom)]
    {
        let _ = limit;
        ready()
    }
    #[cfg(not(loom))]
    {
        let start = std::time::Instant::now();
        loop {
            for _ in 0..64 {
                if ready() {
                    return true;
                }
                std::hint::spin_loop();
            }
            if start.elapsed() >= limit {
                return ready();
            }

        }
    }
}

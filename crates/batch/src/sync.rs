//! std's primitives normally, loom's under `cfg(loom)`, so the loom models
//! check the shipping queue code. Owns nothing else.

#[cfg(loom)]
pub use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
#[cfg(loom)]
pub use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(loom)]
pub use loom::sync::mpsc;
#[cfg(loom)]
pub use loom::thread::{spawn, JoinHandle};

#[cfg(not(loom))]
pub use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
#[cfg(not(loom))]
pub use std::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
pub use std::sync::mpsc;
#[cfg(not(loom))]
pub use std::thread::{spawn, JoinHandle};

/// Lock, ignoring poisoning: no critical section here can panic halfway.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn wait<'a, T>(cv: &Condvar, g: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(g).unwrap_or_else(|p| p.into_inner())
}

/// Wait until notified or `deadline`; under loom the deadline is taken to
/// pass during the wait (loom's condvar cannot time out).
pub fn wait_until<'a, T>(cv: &Condvar, g: MutexGuard<'a, T>, deadline: std::time::Instant) -> MutexGuard<'a, T> {
    #[cfg(loom)]
    {
        let _ = (cv, deadline);
        g
    }
    #[cfg(not(loom))]
    {
        let now = std::time::Instant::now();
        if now >= deadline {
            return g;
        }
        match cv.wait_timeout(g, deadline - now) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        }
    }
}

/// Whether `deadline` has passed (under loom: always, see `wait_until`).
pub fn passed(deadline: std::time::Instant) -> bool {
    #[cfg(loom)]
    {
        let _ = deadline;
        true
    }
    #[cfg(not(loom))]
    {
        std::time::Instant::now() >= deadline
    }
}

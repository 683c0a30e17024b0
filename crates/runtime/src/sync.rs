//! The synchronisation primitives the concurrency code is written against:
//! `std` normally, `loom`'s model-checked twins under `cfg(loom)`, so the loom
//! models check the code that ships. Owns nothing else.

#[cfg(loom)]
pub use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
#[cfg(loom)]
pub use loom::sync::{Arc, Condvar, Mutex, MutexGuard};

#[cfg(not(loom))]
pub use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(loom))]
pub use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Lock a mutex, ignoring poisoning: every critical section in braid leaves
/// its data consistent before anything that can panic, so a panic elsewhere
/// while the lock was held does not make the data unusable.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Wait on `cv` until notified or `deadline`; returns the guard and whether
/// the deadline has passed. Under loom, whose condvar cannot time out, the
/// deadline is taken to pass during the wait (the wait returns at once as
/// expired), so the models explore a timeout firing at every point.
pub fn timed_wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>, deadline: std::time::Instant) -> (MutexGuard<'a, T>, bool) {
    #[cfg(loom)]
    {
        let _ = (cv, deadline);
        (guard, true)
    }
    #[cfg(not(loom))]
    {
        let now = std::time::Instant::now();
        if now >= deadline {
            return (guard, true);
        }
        let g = match cv.wait_timeout(guard, deadline - now) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        };
        (g, std::time::Instant::now() >= deadline)
    }
}

/// Wait on `cv` until notified (spurious wake-ups possible: re-check).
pub fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    match cv.wait(guard) {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

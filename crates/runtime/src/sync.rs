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

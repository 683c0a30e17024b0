//! The `Serialized` table: the few code paths that are truly not reentrant
//! (a library call that is not thread-safe, a one-time setup) register here by
//! name, run under that name's lock, and are counted, so they are visible in
//! one place instead of scattered ad-hoc mutexes. Owns the table.

use crate::sync_std_lock as lock;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

struct Entry {
    lock: Mutex<()>,
    calls: AtomicU64,
}

fn table() -> &'static Mutex<BTreeMap<&'static str, Arc<Entry>>> {
    static T: OnceLock<Mutex<BTreeMap<&'static str, Arc<Entry>>>> = OnceLock::new();
    T.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// Run `f` holding the lock of the serialized path `name`.
///
/// Library API (braid's own paths are all reentrant today, so the table is
/// empty in the product); a caller wrapping a library that is not
/// thread-safe writes:
///
/// ```
/// let v = braid_runtime::serialized("legacy-lib", || 40 + 2);
/// assert_eq!(v, 42);
/// assert!(braid_runtime::serialized_stats().iter().any(|(n, c)| *n == "legacy-lib" && *c >= 1));
/// ```
pub fn serialized<R>(name: &'static str, f: impl FnOnce() -> R) -> R {
    let entry = lock(table()).entry(name).or_insert_with(|| Arc::new(Entry { lock: Mutex::new(()), calls: AtomicU64::new(0) })).clone();
    let _g = lock(&entry.lock);
    // Relaxed: a statistic, read only for reports.
    entry.calls.fetch_add(1, Ordering::Relaxed);
    f()
}

/// Every serialized path registered so far, with its call count.
pub fn serialized_stats() -> Vec<(&'static str, u64)> {
    lock(table()).iter().map(|(k, e)| (*k, e.calls.load(Ordering::Relaxed))).collect()
}

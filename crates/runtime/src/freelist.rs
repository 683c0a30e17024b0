//! The stream pool's slot freelist: a lock-free bitmask of free worker slots
//! (bit i set = slot i free and unbound) plus a mutex/condvar used only by
//! threads that must wait for a slot. Owns the MutualExclusion rule (a slot is
//! taken by exactly one successful compare-and-swap that clears its bit) and
//! the no-lost-wakeup rule between `release` and waiters. Written against
//! [`crate::sync`] so the loom models check this very code.

use crate::sync::{lock, AtomicU64, AtomicUsize, Condvar, Mutex, Ordering};
use std::time::{Duration, Instant};

/// Why `acquire` returned no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireError {
    /// No slot free and the policy said not to wait (or the wait timed out).
    Exhausted { waited: Option<Duration> },
}

/// Free worker slots as bits of one word.
#[derive(Debug)]
pub struct Freelist {
    free: AtomicU64,
    slots: usize,
    /// Threads inside `acquire_wait`; a releaser only takes the lock when
    /// this is non-zero.
    waiters: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Freelist {
    /// `slots` worker slots, all free. `slots` must be in 1..=64 (checked by
    /// the pool's config).
    pub fn new(slots: usize) -> Self {
        assert!((1..=64).contains(&slots), "freelist holds 1..=64 slots");
        let all = if slots == 64 { u64::MAX } else { (1u64 << slots) - 1 };
        Freelist { free: AtomicU64::new(all), slots, waiters: AtomicUsize::new(0), lock: Mutex::new(()), cv: Condvar::new() }
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Number of free slots right now (a snapshot).
    pub fn free_count(&self) -> usize {
        self.free.load(Ordering::Acquire).count_ones() as usize
    }

    /// The free-bit word right now (a snapshot, for checks and stats).
    pub fn free_bits(&self) -> u64 {
        self.free.load(Ordering::Acquire)
    }

    /// Take the lowest free slot without blocking.
    pub fn try_acquire(&self) -> Option<usize> {
        // SeqCst on the load and the CAS: together with the SeqCst `waiters`
        // accesses this forms the Dekker pair with `release` (a waiter either
        // sees the released bit here, or the releaser sees the waiter count).
        let mut cur = self.free.load(Ordering::SeqCst);
        loop {
            if cur == 0 {
                return None;
            }
            let slot = cur.trailing_zeros() as usize;
            let next = cur & !(1u64 << slot);
            // Clearing the bit by CAS is the one moment a slot changes owner:
            // only one thread's CAS from a word with this bit set can succeed.
            match self.free.compare_exchange_weak(cur, next, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return Some(slot),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Take a slot, waiting up to `timeout` (`None` = forever) if none is free.
    pub fn acquire_wait(&self, timeout: Option<Duration>) -> Result<usize, AcquireError> {
        if let Some(s) = self.try_acquire() {
            return Ok(s);
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut guard = lock(&self.lock);
        // SeqCst: see try_acquire. Incremented under the lock, so a releaser
        // that sees it non-zero and then takes the lock finds us waiting on the
        // condvar (or not yet re-checked, in which case we see its bit).
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let result = loop {
            if let Some(s) = self.try_acquire() {
                break Ok(s);
            }
            match deadline {
                None => {
                    guard = match self.cv.wait(guard) {
                        Ok(g) => g,
                        Err(p) => p.into_inner(),
                    }
                }
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break Err(AcquireError::Exhausted { waited: timeout });
                    }
                    guard = match self.cv.wait_timeout(guard, d - now) {
                        Ok((g, _)) => g,
                        Err(p) => p.into_inner().0,
                    }
                }
            }
        };
        // SeqCst: pairs with the load in `release` (see above).
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        drop(guard);
        result
    }

    /// Give a slot back. Always succeeds (ReleaseAlwaysSucceeds); releasing a
    /// slot that is already free is a bug in the caller and is reported.
    pub fn release(&self, slot: usize) -> bool {
        debug_assert!(slot < self.slots);
        // SeqCst: the Dekker pair with `acquire_wait` (bit set before the
        // waiter count is read).
        let prev = self.free.fetch_or(1u64 << slot, Ordering::SeqCst);
        let was_bound = prev & (1u64 << slot) == 0;
        if self.waiters.load(Ordering::SeqCst) > 0 {
            // Taking the lock orders this notify after a waiter that has
            // incremented `waiters` has reached `cv.wait` (it holds the lock
            // until then), so the wake-up cannot be lost.
            drop(lock(&self.lock));
            self.cv.notify_all();
        }
        was_bound
    }
}

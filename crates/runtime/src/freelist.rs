//! The stream pool's slot freelist: a lock-free bitmask of free worker slots
//! (bit i set = slot i free and unbound) plus a mutex/condvar used only by
//! threads that must wait for a slot. Owns the MutualExclusion rule (a slot is
//! taken by exactly one successful compare-and-swap that clears its bit) and
//! the no-lost-wakeup rule between `release` and waiters. Written against
//! [`crate::sync`] so the loom models check this very code.

use crate::sync::{lock, timed_wait, wait, AtomicU64, AtomicUsize, Condvar, Mutex, Ordering};
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
    /// `slots` worker slots (1..=64), all free.
    pub fn new(slots: usize) -> crate::Result<Self> {
        if !(1..=64).contains(&slots) {
            return Err(crate::Error::InvalidArgument(format!("a freelist holds 1..=64 slots, not {slots}")));
        }
        let all = if slots == 64 { u64::MAX } else { (1u64 << slots) - 1 };
        Ok(Freelist { free: AtomicU64::new(all), slots, waiters: AtomicUsize::new(0), lock: Mutex::new(()), cv: Condvar::new() })
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Number of free slots right now (a snapshot).
    pub fn free_count(&self) -> usize {
        // Acquire: a snapshot for checks and stats.
        self.free.load(Ordering::Acquire).count_ones() as usize
    }

    /// The free-bit word right now (a snapshot, for checks and stats).
    pub fn free_bits(&self) -> u64 {
        self.free.load(Ordering::Acquire)
    }

    /// Take the lowest free slot without blocking.
    pub fn try_acquire(&self) -> Option<usize> {
        // Every read of the word is a read-modify-write (`fetch_or(0)`), which
        // reads the latest value in its modification order. That is what makes
        // the hand-shake with `release` work with AcqRel alone (see there): a
        // plain load could read a stale "no slot free" and sleep through a
        // release. (loom found exactly that lost wake-up with plain loads.)
        let mut cur = self.free.fetch_or(0, Ordering::AcqRel);
        loop {
            if cur == 0 {
                return None;
            }
            let slot = cur.trailing_zeros() as usize;
            let next = cur & !(1u64 << slot);
            // Clearing the bit by CAS is the one moment a slot changes owner:
            // only one thread's CAS from a word with this bit set can succeed.
            // AcqRel: acquire the previous owner's release of the slot.
            match self.free.compare_exchange(cur, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(slot),
                Err(_) => cur = self.free.fetch_or(0, Ordering::AcqRel),
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
        // Incremented under the lock, before our re-check of the word. With
        // `release` doing RMW(free) then RMW(waiters) and us RMW(waiters) then
        // RMW(free), one RMW on each word reads the other's write: either the
        // releaser sees us counted (and notifies under the lock, which we hold
        // until we sleep) or our re-check sees its bit. AcqRel suffices
        // because both reads are RMWs (they read the latest value).
        self.waiters.fetch_add(1, Ordering::AcqRel);
        let mut expired = false;
        let result = loop {
            if let Some(s) = self.try_acquire() {
                break Ok(s);
            }
            match deadline {
                None => guard = wait(&self.cv, guard),
                Some(d) => {
                    if expired {
                        break Err(AcquireError::Exhausted { waited: timeout });
                    }
                    (guard, expired) = timed_wait(&self.cv, guard, d);
                }
            }
        };
        // AcqRel: the count only needs to be exact, see above.
        self.waiters.fetch_sub(1, Ordering::AcqRel);
        drop(guard);
        result
    }

    /// Give a slot back. Always succeeds (ReleaseAlwaysSucceeds); releasing a
    /// slot that is already free is a bug in the caller and is reported.
    pub fn release(&self, slot: usize) -> bool {
        if slot >= self.slots {
            return false;
        }
        // Release half: the slot's previous owner's work happens-before the
        // next owner's CAS. Then the waiter count is read with an RMW (see
        // `acquire_wait` for the hand-shake).
        let prev = self.free.fetch_or(1u64 << slot, Ordering::AcqRel);
        let was_bound = prev & (1u64 << slot) == 0;
        if self.waiters.fetch_add(0, Ordering::AcqRel) > 0 {
            // Taking the lock orders this notify after a waiter that has
            // incremented `waiters` has reached `cv.wait` (it holds the lock
            // until then), so the wake-up cannot be lost.
            drop(lock(&self.lock));
            self.cv.notify_all();
        }
        was_bound
    }
}

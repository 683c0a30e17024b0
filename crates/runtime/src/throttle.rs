//! The global cap on in-flight submissions (`BRAID_MAX_INFLIGHT`, default
//! unlimited): the original's `Semaphore(2)`, as a counting semaphore whose
//! permit is held from submission to completion. Owns the count and its
//! waiters; written against [`crate::sync`] for the loom model.

use crate::error::{Error, Result};
use crate::sync::{lock, timed_wait, wait, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct State {
    in_flight: usize,
    peak: usize,
    waited: u64,
}

#[derive(Debug)]
struct Inner {
    limit: Option<usize>,
    state: Mutex<State>,
    cv: Condvar,
}

/// A counting semaphore over in-flight submissions. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Throttle {
    inner: Arc<Inner>,
}

/// One in-flight submission; dropping it frees its place.
#[derive(Debug)]
pub struct Permit {
    inner: Arc<Inner>,
}

impl Throttle {
    /// `None` = unlimited.
    pub fn new(limit: Option<usize>) -> Throttle {
        Throttle { inner: Arc::new(Inner { limit: limit.filter(|&n| n > 0), state: Mutex::new(State { in_flight: 0, peak: 0, waited: 0 }), cv: Condvar::new() }) }
    }

    pub fn limit(&self) -> Option<usize> {
        self.inner.limit
    }

    /// Wait for a place.
    pub fn acquire(&self) -> Permit {
        self.acquire_until(None).unwrap_or_else(|_| unreachable!("no deadline, no timeout"))
    }

    /// Wait at most `timeout` for a place ([`Error::Timeout`] after).
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<Permit> {
        self.acquire_until(Some((Instant::now() + timeout, timeout)))
    }

    fn acquire_until(&self, deadline: Option<(Instant, Duration)>) -> Result<Permit> {
        let mut s = lock(&self.inner.state);
        if let Some(limit) = self.inner.limit {
            if s.in_flight >= limit {
                s.waited += 1;
            }
            let mut expired = false;
            while s.in_flight >= limit {
                match deadline {
                    None => s = wait(&self.inner.cv, s),
                    Some((when, t)) => {
                        if expired {
                            return Err(Error::Timeout(t));
                        }
                        (s, expired) = timed_wait(&self.inner.cv, s, when);
                    }
                }
            }
        }
        s.in_flight += 1;
        s.peak = s.peak.max(s.in_flight);
        Ok(Permit { inner: self.inner.clone() })
    }

    /// Submissions in flight now.
    pub fn in_flight(&self) -> usize {
        lock(&self.inner.state).in_flight
    }

    /// Most submissions ever in flight at once.
    pub fn peak(&self) -> usize {
        lock(&self.inner.state).peak
    }

    /// How many acquisitions had to wait.
    pub fn waited(&self) -> u64 {
        lock(&self.inner.state).waited
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = lock(&self.inner.state);
        s.in_flight -= 1;
        drop(s);
        self.inner.cv.notify_one();
    }
}

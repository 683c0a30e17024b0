//! The counter pair behind a host-side event (the CPU backend's events and the
//! loom model of event ordering): `recorded` counts records, `completed` the
//! highest record whose preceding work has finished. Owns the rule that a wait
//! snapshots its target when it is issued, so later records never extend it,
//! and that `completed` never goes backwards.

use crate::error::{Error, Result};
use crate::sync::{lock, timed_wait, wait, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Counters {
    recorded: u64,
    completed: u64,
    /// When `completed` last advanced (for elapsed time).
    completed_at: Option<Instant>,
}

/// Shared state of one event.
#[derive(Debug, Default)]
pub struct EventState {
    inner: Mutex<Counters>,
    cv: Condvar,
}

impl EventState {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new record: returns the generation the stream must complete.
    pub fn record(&self) -> u64 {
        let mut c = lock(&self.inner);
        c.recorded += 1;
        c.recorded
    }

    /// The stream has finished everything before record `generation`.
    pub fn complete(&self, generation: u64) {
        let mut c = lock(&self.inner);
        // Records on one stream complete in order, but an event may be
        // re-recorded on another stream: keep the maximum so the counter never
        // goes backwards.
        if generation > c.completed {
            c.completed = generation;
            c.completed_at = Some(Instant::now());
        }
        drop(c);
        self.cv.notify_all();
    }

    /// The target a wait issued now must reach.
    pub fn target(&self) -> u64 {
        lock(&self.inner).recorded
    }

    pub fn is_complete(&self, target: u64) -> bool {
        lock(&self.inner).completed >= target
    }

    pub fn completed(&self) -> u64 {
        lock(&self.inner).completed
    }

    pub fn completed_at(&self) -> Option<Instant> {
        lock(&self.inner).completed_at
    }

    /// Block until `completed >= target`, or `timeout` passes.
    pub fn wait(&self, target: u64, timeout: Option<Duration>) -> Result<()> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut c = lock(&self.inner);
        let mut expired = false;
        while c.completed < target {
            match deadline {
                None => c = wait(&self.cv, c),
                Some(d) => {
                    if expired {
                        return Err(Error::Timeout(timeout.unwrap_or_default()));
                    }
                    (c, expired) = timed_wait(&self.cv, c, d);
                }
            }
        }
        Ok(())
    }
}

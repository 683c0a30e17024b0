//! [`Pipeline`]: keeps up to `depth` submissions in flight on a stream and
//! hands outputs back in submission order, waiting on each one's own
//! completion marker (an event), never on a device-wide sync. Owns the
//! in-flight window.

use braid_runtime::{Event, Result};
use std::collections::VecDeque;

/// Something that can be waited for: the runtime's [`Event`], or a test fake.
pub trait Completion {
    fn wait(&self) -> Result<()>;
}

impl Completion for Event {
    fn wait(&self) -> Result<()> {
        self.synchronize()
    }
}

/// A window of at most `depth` outputs in flight.
pub struct Pipeline<T, C: Completion = Event> {
    depth: usize,
    inflight: VecDeque<(T, C)>,
}

impl<T, C: Completion> Pipeline<T, C> {
    /// `depth` ≥ 1 (0 is taken as 1).
    pub fn new(depth: usize) -> Self {
        Pipeline { depth: depth.max(1), inflight: VecDeque::new() }
    }

    pub fn depth(&self) -> usize {
        self.depth
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Add an output whose work completes at `done`. If that makes more than
    /// `depth` in flight, wait for the oldest and return it.
    pub fn push(&mut self, output: T, done: C) -> Result<Option<T>> {
        self.inflight.push_back((output, done));
        if self.inflight.len() > self.depth {
            return self.pop().map(Some);
        }
        Ok(None)
    }

    fn pop(&mut self) -> Result<T> {
        let (out, done) = self.inflight.pop_front().expect("pop called with an empty window");
        done.wait()?;
        Ok(out)
    }

    /// Wait for everything in flight; outputs in submission order.
    pub fn drain(&mut self) -> Result<Vec<T>> {
        let mut v = Vec::with_capacity(self.inflight.len());
        while !self.inflight.is_empty() {
            v.push(self.pop()?);
        }
        Ok(v)
    }
}

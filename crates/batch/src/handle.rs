//! The one-shot result slot between a worker and its caller: [`Handle`] (the
//! caller's side: blocking `wait` or `.await`) and [`Completer`] (the
//! worker's side). Owns the rule that every accepted request gets exactly
//! one answer: a `Completer` dropped without answering answers with an error
//! (NoStuckFutures), and a dropped `Handle` simply discards the answer.
//! A handle dropped before its answer arrives marks the request cancelled:
//! the [`Batcher`](crate::Batcher) then skips it if it has not started (and
//! counts it as cancelled); one already running finishes and its answer is
//! discarded.
//! A handle may carry its request's deadline: a blocking wait then answers
//! `Error::Timeout` at the deadline even if every worker is busy (the
//! request is then answered `Timeout` by its worker too, never run; one
//! given up by `wait_timeout` before its own deadline is cancelled, or run
//! if its batch had started, that answer discarded).

use crate::sync::{lock, wait, wait_until, Arc, Condvar, Mutex};
use braid_runtime::{Error, Result};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

struct State<R> {
    result: Option<Result<R>>,
    /// The answer was given (and possibly already taken).
    done: bool,
    /// The handle was dropped before the answer came.
    cancelled: bool,
    waker: Option<Waker>,
}

struct Slot<R> {
    state: Mutex<State<R>>,
    cv: Condvar,
}

/// The caller's side of a request.
#[must_use = "a handle is how the result comes back"]
pub struct Handle<R> {
    slot: Arc<Slot<R>>,
    /// The request's deadline and the duration it was set from.
    deadline: Option<(Instant, Duration)>,
}

/// The worker's side of a request.
pub struct Completer<R> {
    slot: Option<Arc<Slot<R>>>,
}

/// A connected pair.
pub fn pair<R>() -> (Completer<R>, Handle<R>) {
    let slot = Arc::new(Slot { state: Mutex::new(State { result: None, done: false, cancelled: false, waker: None }), cv: Condvar::new() });
    (Completer { slot: Some(slot.clone()) }, Handle { slot, deadline: None })
}

/// A connected pair whose handle gives up at `deadline` (set from `after`).
pub(crate) fn pair_with_deadline<R>(deadline: Option<(Instant, Duration)>) -> (Completer<R>, Handle<R>) {
    let (c, mut h) = pair();
    h.deadline = deadline;
    (c, h)
}

impl<R> Completer<R> {
    /// Answer the request (once; consumes the completer).
    pub fn complete(mut self, r: Result<R>) {
        self.finish(r);
    }

    fn finish(&mut self, r: Result<R>) {
        let Some(slot) = self.slot.take() else { return };
        let waker = {
            let mut s = lock(&slot.state);
            s.result = Some(r);
            s.done = true;
            s.waker.take()
        };
        slot.cv.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<R> Completer<R> {
    /// Was the caller's handle dropped before an answer came?
    pub(crate) fn is_cancelled(&self) -> bool {
        self.slot.as_ref().is_some_and(|s| lock(&s.state).cancelled)
    }
}

impl<R> Drop for Handle<R> {
    fn drop(&mut self) {
        // Under the slot's lock, so a worker's `is_cancelled` sees either
        // the flag or a request it may still run (its answer is then dropped).
        let mut s = lock(&self.slot.state);
        if !s.done {
            s.cancelled = true;
        }
    }
}

impl<R> Drop for Completer<R> {
    fn drop(&mut self) {
        // Never leave a caller waiting forever.
        self.finish(Err(Error::ShutDown("the request was dropped before it ran".into())));
    }
}

impl<R> Handle<R> {
    /// Block until the answer arrives (or the request's deadline passes,
    /// if it has one: then `Error::Timeout`).
    pub fn wait(self) -> Result<R> {
        if let Some((when, after)) = self.deadline {
            return self.wait_until(when, after);
        }
        let mut s = lock(&self.slot.state);
        while !s.done {
            s = wait(&self.slot.cv, s);
        }
        s.result.take().unwrap_or_else(|| Err(Error::InvalidArgument("result already taken".into())))
    }

    /// Block at most `timeout`; `Error::Timeout` after (the request itself
    /// goes on; its answer is then discarded).
    pub fn wait_timeout(self, timeout: Duration) -> Result<R> {
        let mut until = (Instant::now() + timeout, timeout);
        if let Some(d) = self.deadline {
            if d.0 < until.0 {
                until = d;
            }
        }
        self.wait_until(until.0, until.1)
    }

    fn wait_until(self, deadline: Instant, after: Duration) -> Result<R> {
        let mut s = lock(&self.slot.state);
        while !s.done {
            if crate::sync::passed(deadline) {
                return Err(Error::Timeout(after));
            }
            s = wait_until(&self.slot.cv, s, deadline);
        }
        s.result.take().unwrap_or_else(|| Err(Error::InvalidArgument("result already taken".into())))
    }

    /// Has the answer arrived?
    pub fn is_ready(&self) -> bool {
        lock(&self.slot.state).done
    }
}

/// `.await` answers when the worker does: an expired request is answered
/// with `Error::Timeout` by its worker (there is no timer here; wrap the
/// future in your runtime's timeout for a caller-side one).
impl<R> Future for Handle<R> {
    type Output = Result<R>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R>> {
        let mut s = lock(&self.slot.state);
        if s.done {
            return Poll::Ready(s.result.take().unwrap_or_else(|| Err(Error::InvalidArgument("result already taken".into()))));
        }
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

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

/// The worker threads of one queue or batcher, so that `shutdown` called on
/// a worker itself (a job dropping the last `Arc` to its own queue) does not
/// join its own thread: it stops accepting and lets the workers finish on
/// their own instead.
#[derive(Default)]
pub struct Workers {
    handles: Mutex<Vec<JoinHandle<()>>>,
    #[cfg(not(loom))]
    ids: std::sync::Mutex<Vec<std::thread::ThreadId>>,
}

impl Workers {
    pub fn new() -> Self {
        Workers { handles: Mutex::new(Vec::new()), #[cfg(not(loom))] ids: std::sync::Mutex::new(Vec::new()) }
    }

    pub fn push(&self, h: JoinHandle<()>) {
        #[cfg(not(loom))]
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).push(h.thread().id());
        lock(&self.handles).push(h);
    }

    /// Start `n` workers. Worker `i` makes its state with `make(i)` on its
    /// own thread (so a stream it binds is its own), reports whether that
    /// worked, then runs `run(state)` until it returns. Returns once every
    /// worker has reported: the first error, or `JobPanicked(panicked)` if a
    /// `make` panicked. On an error the caller shuts its queue down (the
    /// workers that did start then drain and exit).
    pub fn start<S, M, R>(&self, n: usize, make: M, run: R, panicked: &str) -> braid_runtime::Result<()>
    where
        S: 'static,
        M: Fn(usize) -> braid_runtime::Result<S> + Send + Sync + 'static,
        R: Fn(S) + Send + Sync + 'static,
    {
        let (make, run) = (Arc::new(make), Arc::new(run));
        let (ready_tx, ready_rx) = mpsc::channel::<braid_runtime::Result<()>>();
        for i in 0..n {
            let (make, run, ready) = (make.clone(), run.clone(), ready_tx.clone());
            self.push(spawn(move || {
                let state = match make(i) {
                    Ok(s) => {
                        let _ = ready.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                drop(ready);
                run(state);
            }));
        }
        drop(ready_tx);
        for _ in 0..n {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(braid_runtime::Error::JobPanicked(panicked.into())),
            }
        }
        Ok(())
    }

    /// Join every worker, unless called on one of them (then detach them).
    pub fn join(&self) {
        #[cfg(not(loom))]
        {
            let me = std::thread::current().id();
            if self.ids.lock().unwrap_or_else(|p| p.into_inner()).contains(&me) {
                return;
            }
        }
        let handles = std::mem::take(&mut *lock(&self.handles));
        for h in handles {
            let _ = h.join();
        }
    }
}

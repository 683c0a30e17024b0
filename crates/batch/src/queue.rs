//! [`BatchQueue`]: jobs submitted from any thread, run by a pool of worker
//! threads (one by default, as in the original), each with its own context
//! (for instance its own stream), results handed back through a [`Handle`].
//! Owns the bounded FIFO, backpressure (block or `Overloaded`), the workers
//! and shutdown: `shutdown` stops accepting and drains everything accepted.
//!
//! Invariants (loom-checked in `tests/loom.rs`): every accepted job runs
//! exactly once and its result reaches exactly its caller; a submit racing
//! shutdown is either accepted-and-run or refused with `ShutDown`, never lost;
//! completed never exceeds submitted.

use crate::handle::{pair, Completer, Handle};
use crate::sync::{lock, wait, Arc, AtomicU64, Condvar, Mutex, Ordering, Workers};
use braid_runtime::{Error, Result};
use std::collections::VecDeque;

/// What `submit` does when the queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Wait for room.
    Block,
    /// Return `Error::Overloaded` at once.
    Reject,
}

#[derive(Clone, Debug)]
pub struct QueueConfig {
    /// Worker threads (each with its own context).
    pub workers: usize,
    /// Jobs accepted but not yet started, at most.
    pub capacity: usize,
    pub when_full: WhenFull,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig { workers: 1, capacity: 1024, when_full: WhenFull::Block }
    }
}

/// Counter snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub submitted: u64,
    pub completed: u64,
    pub rejected: u64,
    pub panicked: u64,
    /// Accepted, not yet completed.
    pub pending: u64,
}

struct State<J, R> {
    jobs: VecDeque<(J, Completer<R>)>,
    accepting: bool,
}

struct Shared<J, R> {
    state: Mutex<State<J, R>>,
    not_empty: Condvar,
    not_full: Condvar,
    capacity: usize,
    when_full: WhenFull,
    submitted: AtomicU64,
    completed: AtomicU64,
    rejected: AtomicU64,
    panicked: AtomicU64,
}

/// A thread-safe queue of jobs run by worker threads.
pub struct BatchQueue<J: Send + 'static, R: Send + 'static> {
    shared: Arc<Shared<J, R>>,
    workers: Workers,
}

impl<J: Send + 'static, R: Send + 'static> BatchQueue<J, R> {
    /// Start `config.workers` workers. Worker `i` first builds its context
    /// with `factory(i)` (on its own thread, so a stream it takes is its
    /// own), then runs `run(&mut ctx, job)` for each job it takes.
    pub fn new<W, F, G>(config: QueueConfig, factory: F, run: G) -> Result<Self>
    where
        W: 'static,
        F: Fn(usize) -> Result<W> + Send + Sync + 'static,
        G: Fn(&mut W, J) -> R + Send + Sync + 'static,
    {
        if config.workers == 0 || config.capacity == 0 {
            return Err(Error::InvalidArgument(format!("a batch queue needs at least one worker and capacity ≥ 1 (got {} workers, capacity {})", config.workers, config.capacity)));
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State { jobs: VecDeque::new(), accepting: true }),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            capacity: config.capacity,
            when_full: config.when_full,
            submitted: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
        });
        let q = BatchQueue { shared: shared.clone(), workers: Workers::new() };
        if let Err(e) = q.workers.start(config.workers, factory, move |mut ctx| worker_loop(&shared, &mut ctx, &run), "a worker's context factory panicked") {
            q.shutdown();
            return Err(e);
        }
        Ok(q)
    }

    /// Queue a job; its result comes back through the handle.
    pub fn submit(&self, job: J) -> Result<Handle<R>> {
        let sh = &self.shared;
        let mut st = lock(&sh.state);
        loop {
            if !st.accepting {
                return Err(Error::ShutDown("the batch queue is shut down".into()));
            }
            if st.jobs.len() < sh.capacity {
                break;
            }
            match sh.when_full {
                WhenFull::Reject => {
                    // Relaxed: counters are statistics.
                    sh.rejected.fetch_add(1, Ordering::Relaxed);
                    return Err(Error::Overloaded { capacity: sh.capacity });
                }
                WhenFull::Block => st = wait(&sh.not_full, st),
            }
        }
        let (done, handle) = pair();
        st.jobs.push_back((job, done));
        // Counted under the lock, before any worker can complete it, so
        // completed never exceeds submitted.
        sh.submitted.fetch_add(1, Ordering::Relaxed);
        drop(st);
        sh.not_empty.notify_one();
        Ok(handle)
    }

    /// Submit and wait.
    pub fn run(&self, job: J) -> Result<R> {
        self.submit(job)?.wait()
    }

    /// Stop accepting; wait until every accepted job has run and the workers
    /// have exited. Idempotent. Called from inside a job (on a worker), it
    /// stops accepting and returns without waiting: the workers drain and
    /// exit on their own.
    pub fn shutdown(&self) {
        {
            let mut st = lock(&self.shared.state);
            st.accepting = false;
        }
        self.shared.not_empty.notify_all();
        self.shared.not_full.notify_all();
        self.workers.join();
    }

    pub fn stats(&self) -> QueueStats {
        let s = &self.shared;
        // Relaxed: a snapshot of statistics, not a synchronisation point;
        // counters read one after another may be from slightly different
        // moments (hence the saturating `pending`).
        let submitted = s.submitted.load(Ordering::Relaxed);
        let completed = s.completed.load(Ordering::Relaxed);
        QueueStats { submitted, completed, rejected: s.rejected.load(Ordering::Relaxed), panicked: s.panicked.load(Ordering::Relaxed), pending: submitted.saturating_sub(completed) }
    }

    /// Jobs waiting to start.
    pub fn depth(&self) -> usize {
        lock(&self.shared.state).jobs.len()
    }
}

fn worker_loop<J, R, W>(sh: &Shared<J, R>, ctx: &mut W, run: &(dyn Fn(&mut W, J) -> R + Send + Sync)) {
    loop {
        let (job, done) = {
            let mut st = lock(&sh.state);
            loop {
                if let Some(j) = st.jobs.pop_front() {
                    break j;
                }
                if !st.accepting {
                    return; // drained and closed
                }
                st = wait(&sh.not_empty, st);
            }
        };
        sh.not_full.notify_one();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(ctx, job)));
        let r = match r {
            Ok(v) => Ok(v),
            Err(p) => {
                // Relaxed: statistic.
                sh.panicked.fetch_add(1, Ordering::Relaxed);
                Err(Error::JobPanicked(braid_runtime::panic_message(&p)))
            }
        };
        // Relaxed: statistic; counted before the caller can observe the result.
        sh.completed.fetch_add(1, Ordering::Relaxed);
        done.complete(r);
    }
}

impl<J: Send + 'static, R: Send + 'static> Drop for BatchQueue<J, R> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

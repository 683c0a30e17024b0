//! [`Batcher`]: dynamic batching for callers that each hold one input. It
//! groups requests by length bucket (so a short text does not pay for a
//! long one), runs one forward per batch of up to `max_batch_size` and hands
//! each caller its own output. When a batch starts is the [`BatchPolicy`]:
//! `Eager` (the default) starts at once whenever a worker is idle, so
//! requests gather only while every worker is busy (continuous batching);
//! `Wait` (the original's) holds a batch until it is full or its oldest
//! request has waited `max_queue_delay`. Owns the waiting queue, the
//! gathering policy,
//! per-request deadlines (`Error::Timeout`, never silence), overload
//! (`Error::Overloaded`), all-or-nothing admission of a group
//! ([`Batcher::submit_all`]), cancellation (a request whose [`Handle`] was
//! dropped before its batch started is skipped and counted `cancelled`,
//! never computed), the token budget of a batch (`max_batch_tokens`),
//! shutdown (drains what was accepted) and the counters.

use crate::handle::{pair_with_deadline, Completer, Handle};
use crate::sync::{lock, wait, wait_until, Arc, AtomicU64, AtomicUsize, Condvar, Mutex, Ordering, Workers};
use braid_runtime::{Error, Result, Throttle};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A model the batcher can drive: one forward over many inputs, one output
/// per input, in order.
pub trait BatchModel: Send + Sync + 'static {
    type Input: Send + 'static;
    type Output: Send + 'static;
    /// Per-worker state (e.g. nothing, or scratch buffers), made on the
    /// worker's own thread (so a stream it takes is the worker's own).
    type Worker: 'static;
    fn worker(&self, index: usize) -> Result<Self::Worker>;
    /// Length used for bucketing (sequence length; 1 for fixed-size inputs).
    fn len(&self, _input: &Self::Input) -> usize {
        1
    }
    /// Run `inputs` as one batch (padding internally as needed).
    fn forward(&self, worker: &mut Self::Worker, inputs: Vec<Self::Input>) -> Result<Vec<Self::Output>>;
}

/// When a batch starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BatchPolicy {
    /// A worker that is idle takes what is queued at once (up to the batch
    /// limit); requests gather only while every worker is busy, so a lone
    /// client never pays a gathering delay, and batches grow with load.
    /// `max_queue_delay` is then an upper bound that is never reached.
    #[default]
    Eager,
    /// The original's: a batch starts when its bucket is full or its oldest
    /// request has waited `max_queue_delay`, even if a worker sits idle.
    Wait,
    /// Eager, but an idle worker waits (at most `max_queue_delay`) until
    /// its bucket holds as many requests as the last batch did: a lone
    /// client still never waits (the last batch was 1), while clients
    /// answered together and coming back together are not split into two
    /// forwards by the first one back (closed-loop load, or any model whose
    /// forward has a large fixed cost).
    Follow,
}

impl BatchPolicy {
    pub fn name(self) -> &'static str {
        match self {
            BatchPolicy::Eager => "eager",
            BatchPolicy::Wait => "wait",
            BatchPolicy::Follow => "follow",
        }
    }
}

impl std::str::FromStr for BatchPolicy {
    type Err = Error;
    /// `eager` or `wait` (any case); anything else is an error naming both.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "eager" => Ok(BatchPolicy::Eager),
            "wait" => Ok(BatchPolicy::Wait),
            "follow" => Ok(BatchPolicy::Follow),
            _ => Err(Error::InvalidArgument(format!("batch policy {s:?}: expected `eager` (start at once when a worker is idle), `wait` (gather up to the delay) or `follow` (start once as many are queued as the last batch held, or at the delay)"))),
        }
    }
}

#[derive(Clone, Debug)]
pub struct BatcherConfig {
    pub max_batch_size: usize,
    /// When a batch starts (see [`BatchPolicy`]).
    pub policy: BatchPolicy,
    /// `Wait`: how long the oldest request may wait for others to join it.
    /// `Eager`: an upper bound on it (never reached: an idle worker starts
    /// at once, and a busy one looks at the queue as soon as it is free).
    pub max_queue_delay: Duration,
    /// Requests waiting, at most; beyond it `submit` returns `Overloaded`.
    pub capacity: usize,
    /// Worker threads, each running whole batches.
    pub workers: usize,
    /// Group requests by power-of-two length bucket.
    pub bucket_by_length: bool,
    /// If set, batches are cut to the largest preferred size that fits.
    pub preferred_batch_sizes: Vec<usize>,
    /// Deadline applied to requests submitted without one.
    pub default_deadline: Option<Duration>,
    /// If set, the batch limit adapts between `min_batch_size` and
    /// `max_batch_size` (see [`Adaptive`]).
    pub adaptive: Option<Adaptive>,
    /// If set, each forward holds a permit of this throttle (for instance
    /// `device.throttle().clone()`, or a `Throttle::new(Some(2))` of its own).
    pub throttle: Option<Throttle>,
    /// If set, a batch holds at most this many tokens, counted as the
    /// forward computes them: requests × the longest length in the batch
    /// (rows are padded). A single request longer than the budget still
    /// runs alone.
    pub max_batch_tokens: Option<usize>,
}

/// The original's adaptive mode: after each batch is taken, the limit is
/// doubled when more than twice the limit is still waiting, and halved
/// when fewer than half the limit are waiting and the batch's oldest
/// request waited less than `target_latency` (light load: a smaller limit
/// closes batches sooner instead of waiting out `max_queue_delay`).
#[derive(Clone, Debug)]
pub struct Adaptive {
    pub min_batch_size: usize,
    pub target_latency: Duration,
}

impl Default for BatcherConfig {
    /// The original's defaults (batch 8, 10 ms, one worker), with the
    /// eager policy.
    fn default() -> Self {
        BatcherConfig { max_batch_size: 8, policy: BatchPolicy::Eager, max_queue_delay: Duration::from_millis(10), capacity: 4096, workers: 1, bucket_by_length: true, preferred_batch_sizes: Vec::new(), default_deadline: None, adaptive: None, throttle: None, max_batch_tokens: None }
    }
}

/// Counter snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatcherStats {
    pub submitted: u64,
    pub completed: u64,
    pub rejected: u64,
    pub timed_out: u64,
    /// Requests whose handle was dropped before their batch started: never
    /// computed, not counted in `completed`.
    pub cancelled: u64,
    pub batches: u64,
    /// Requests waiting now.
    pub queue_depth: usize,
    /// `histogram[i]` = batches of size i+1, up to the largest batch run
    /// so far (it grows as batches do: nothing is allocated for a
    /// `max_batch_size` never reached).
    pub batch_size_histogram: Vec<u64>,
    pub mean_batch_size: f64,
    /// Mean time from submit to the start of the request's batch.
    pub mean_queue_wait: Duration,
    /// Mean forward time per batch.
    pub mean_compute: Duration,
    /// Sum of queue waits over `completed - timed_out` requests.
    pub total_queue_wait: Duration,
    /// Sum of forward times over `batches` batches.
    pub total_compute: Duration,
    /// The batch limit now (`max_batch_size` unless adaptive).
    pub batch_limit: usize,
}

struct Request<I, O> {
    input: I,
    len: usize,
    arrived: Instant,
    deadline: Option<Instant>,
    done: Completer<O>,
}

struct State<I, O> {
    waiting: VecDeque<Request<I, O>>,
    accepting: bool,
    /// Workers blocked on `Shared::cv` in `next_batch` (counted under this
    /// lock, so a submit that sees 0 knows every worker will look at the
    /// queue before it next sleeps).
    idle: usize,
    /// Size of the last batch taken (`Follow`'s target; starts at 1).
    last_batch: usize,
}

struct Counters {
    submitted: AtomicU64,
    completed: AtomicU64,
    rejected: AtomicU64,
    timed_out: AtomicU64,
    cancelled: AtomicU64,
    batches: AtomicU64,
    wait_ns: AtomicU64,
    compute_ns: AtomicU64,
    /// Grown on demand to the largest batch run (not allocated up front:
    /// `max_batch_size` may be large and never reached).
    histogram: Mutex<Vec<u64>>,
}

struct Shared<M: BatchModel> {
    model: Arc<M>,
    config: BatcherConfig,
    state: Mutex<State<M::Input, M::Output>>,
    cv: Condvar,
    counters: Counters,
    /// The batch limit (adaptive mode changes it). Relaxed: a tuning knob;
    /// a stale read only makes one batch cut at the previous limit.
    limit: AtomicUsize,
}

/// Dynamic batching over a [`BatchModel`].
pub struct Batcher<M: BatchModel> {
    shared: Arc<Shared<M>>,
    workers: Workers,
}

/// Number of length buckets: bucket k holds lengths in (2^(k-1), 2^k].
const BUCKETS: usize = usize::BITS as usize + 1;

/// The power-of-two bucket of a length (0 for lengths 0 and 1); never
/// overflows, unlike `next_power_of_two`.
fn bucket(len: usize) -> usize {
    (usize::BITS - (len.max(1) - 1).leading_zeros()) as usize
}

impl<M: BatchModel> Batcher<M> {
    pub fn new(model: Arc<M>, config: BatcherConfig) -> Result<Self> {
        if config.max_batch_size == 0 || config.workers == 0 || config.capacity == 0 {
            return Err(Error::InvalidArgument("batcher needs max_batch_size, workers and capacity ≥ 1".into()));
        }
        if config.preferred_batch_sizes.iter().any(|&p| p == 0 || p > config.max_batch_size) {
            return Err(Error::InvalidArgument(format!("preferred batch sizes must be in 1..={}", config.max_batch_size)));
        }
        if config.max_batch_tokens == Some(0) {
            return Err(Error::InvalidArgument("max_batch_tokens must be at least 1".into()));
        }
        if let Some(a) = &config.adaptive {
            if a.min_batch_size == 0 || a.min_batch_size > config.max_batch_size {
                return Err(Error::InvalidArgument(format!("adaptive min_batch_size must be in 1..={}", config.max_batch_size)));
            }
        }
        let counters = Counters {
            submitted: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            wait_ns: AtomicU64::new(0),
            compute_ns: AtomicU64::new(0),
            histogram: Mutex::new(Vec::new()),
        };
        let shared = Arc::new(Shared { model, config: config.clone(), state: Mutex::new(State { waiting: VecDeque::new(), accepting: true, idle: 0, last_batch: 1 }), cv: Condvar::new(), counters, limit: AtomicUsize::new(config.max_batch_size) });
        let b = Batcher { shared: shared.clone(), workers: Workers::new() };
        let sh = shared.clone();
        let started = b.workers.start(
            config.workers,
            move |i| sh.model.worker(i),
            move |mut w| {
                while let Some(batch) = next_batch(&shared) {
                    run_batch(&shared, &mut w, batch);
                }
            },
            "a batcher worker panicked while starting",
        );
        if let Err(e) = started {
            b.shutdown();
            return Err(e);
        }
        Ok(b)
    }

    /// Queue one input; `deadline` (from now) overrides the default.
    pub fn submit_with_deadline(&self, input: M::Input, deadline: Option<Duration>) -> Result<Handle<M::Output>> {
        let sh = &self.shared;
        let len = sh.model.len(&input);
        let now = Instant::now();
        let after = deadline.or(sh.config.default_deadline);
        let deadline = after.map(|d| now + d);
        let mut st = lock(&sh.state);
        if !st.accepting {
            return Err(Error::ShutDown("the batcher is shut down".into()));
        }
        if st.waiting.len() >= sh.config.capacity {
            sh.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(Error::Overloaded { capacity: sh.config.capacity });
        }
        let (done, handle) = pair_with_deadline(deadline.zip(after));
        st.waiting.push_back(Request { input, len, arrived: now, deadline, done });
        // Relaxed: statistics; counted under the lock before any worker can
        // complete the request.
        sh.counters.submitted.fetch_add(1, Ordering::Relaxed);
        let wake = wake_for(sh, &st, 1);
        drop(st);
        wake.notify(&sh.cv);
        Ok(handle)
    }

    /// Queue every input of `inputs` or none: if they do not all fit in the
    /// queue, none is queued and the answer is `Overloaded` (all of them are
    /// counted as rejected). The default deadline applies to each.
    pub fn submit_all(&self, inputs: Vec<M::Input>) -> Result<Vec<Handle<M::Output>>> {
        let sh = &self.shared;
        let n = inputs.len();
        let lens: Vec<usize> = inputs.iter().map(|i| sh.model.len(i)).collect();
        let now = Instant::now();
        let after = sh.config.default_deadline;
        let deadline = after.map(|d| now + d);
        let mut st = lock(&sh.state);
        if !st.accepting {
            return Err(Error::ShutDown("the batcher is shut down".into()));
        }
        if st.waiting.len().saturating_add(n) > sh.config.capacity {
            // Relaxed: statistics.
            sh.counters.rejected.fetch_add(n as u64, Ordering::Relaxed);
            return Err(Error::Overloaded { capacity: sh.config.capacity });
        }
        let was = st.waiting.len();
        let mut handles = Vec::with_capacity(n);
        for (input, len) in inputs.into_iter().zip(lens) {
            let (done, handle) = pair_with_deadline(deadline.zip(after));
            st.waiting.push_back(Request { input, len, arrived: now, deadline, done });
            handles.push(handle);
        }
        // Relaxed: statistics, counted under the lock before any worker can
        // complete these requests (as in `submit_with_deadline`).
        sh.counters.submitted.fetch_add(n as u64, Ordering::Relaxed);
        let wake = if n > 0 { wake_for(sh, &st, st.waiting.len() - was) } else { Wake::None };
        drop(st);
        wake.notify(&sh.cv);
        Ok(handles)
    }

    pub fn submit(&self, input: M::Input) -> Result<Handle<M::Output>> {
        self.submit_with_deadline(input, None)
    }

    /// Submit and wait for this input's output (or `Error::Timeout` at the
    /// default deadline, if configured).
    pub fn infer(&self, input: M::Input) -> Result<M::Output> {
        self.submit(input)?.wait()
    }

    /// Stop accepting; run everything accepted; join the workers (unless
    /// called on a worker). Idempotent.
    pub fn shutdown(&self) {
        lock(&self.shared.state).accepting = false;
        self.shared.cv.notify_all();
        self.workers.join();
    }

    pub fn stats(&self) -> BatcherStats {
        let c = &self.shared.counters;
        // Relaxed throughout: a snapshot of statistics, not a
        // synchronisation point (counters may be from slightly different
        // moments while requests are in flight).
        let batches = c.batches.load(Ordering::Relaxed);
        let hist: Vec<u64> = lock(&c.histogram).clone();
        let in_batches: u64 = hist.iter().enumerate().map(|(i, n)| (i as u64 + 1) * n).sum();
        BatcherStats {
            submitted: c.submitted.load(Ordering::Relaxed),
            completed: c.completed.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            timed_out: c.timed_out.load(Ordering::Relaxed),
            cancelled: c.cancelled.load(Ordering::Relaxed),
            batches,
            queue_depth: lock(&self.shared.state).waiting.len(),
            mean_batch_size: if batches > 0 { in_batches as f64 / batches as f64 } else { 0.0 },
            mean_queue_wait: Duration::from_nanos(c.wait_ns.load(Ordering::Relaxed).checked_div(in_batches).unwrap_or(0)),
            mean_compute: Duration::from_nanos(c.compute_ns.load(Ordering::Relaxed).checked_div(batches).unwrap_or(0)),
            batch_size_histogram: hist,
            total_queue_wait: Duration::from_nanos(c.wait_ns.load(Ordering::Relaxed)),
            total_compute: Duration::from_nanos(c.compute_ns.load(Ordering::Relaxed)),
            batch_limit: self.shared.limit.load(Ordering::Relaxed),
        }
    }
}

impl<M: BatchModel> Drop for Batcher<M> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Whom a submit wakes.
enum Wake {
    None,
    One,
    All,
}

impl Wake {
    fn notify(self, cv: &Condvar) {
        match self {
            Wake::None => {}
            Wake::One => cv.notify_one(),
            Wake::All => cv.notify_all(),
        }
    }
}

/// The wake-up owed after `added` requests were queued (called under the
/// state lock).
fn wake_for<M: BatchModel>(sh: &Shared<M>, st: &State<M::Input, M::Output>, added: usize) -> Wake {
    match sh.config.policy {
        // Eager: an idle worker takes what is queued, so wake one per
        // request added while any sleeps (a worker that is not asleep looks
        // at the queue before it next sleeps: `idle` is counted under the
        // lock). More than one for a group: its requests may span buckets.
        // Follow: the same (the woken worker starts once its bucket holds
        // the last batch's size; until then it sleeps to the delay).
        BatchPolicy::Eager | BatchPolicy::Follow if st.idle == 0 => Wake::None,
        BatchPolicy::Eager | BatchPolicy::Follow if added == 1 => Wake::One,
        BatchPolicy::Eager | BatchPolicy::Follow => Wake::All,
        // Wait: wake for a first request (it starts the delay clock) and
        // whenever a bucket may have become full. (Relaxed limit: see
        // `Shared::limit`; a stale value costs at most one extra or one
        // late wake-up, and the delay timer still runs.)
        BatchPolicy::Wait => {
            let first = st.waiting.len() == added;
            if first || st.waiting.len() >= sh.limit.load(Ordering::Relaxed) || sh.config.max_batch_tokens.is_some() {
                Wake::All
            } else {
                Wake::None
            }
        }
    }
}

/// Wait for and take the next batch; `None` when shut down and drained.
///
/// Policy: expired requests are answered `Timeout` first. Then the oldest
/// request whose length bucket holds a full batch (`limit` requests) goes
/// with its bucket-mates; failing that, the oldest request's bucket goes as
/// it is: at once under `Eager` (this worker is idle), once the oldest has
/// waited `max_queue_delay` under `Wait` (or at shutdown), under `Follow`
/// once it holds as many as the last batch taken, or at the delay. Within a bucket
/// requests leave in arrival order. Under `Eager`, a worker that leaves
/// requests behind wakes another idle one for them.
fn next_batch<M: BatchModel>(sh: &Shared<M>) -> Option<Vec<Request<M::Input, M::Output>>> {
    let cfg = &sh.config;
    let mut st = lock(&sh.state);
    loop {
        // Expired requests get their Timeout now, whatever else happens.
        let now = Instant::now();
        let mut earliest_deadline: Option<Instant> = None;
        let mut i = 0;
        while i < st.waiting.len() {
            // An expired request counts as timed out even if its caller
            // has gone (a blocking `wait` gives up at the deadline and
            // drops its handle); otherwise a gone caller's request is
            // cancelled.
            let expired = st.waiting[i].deadline.is_some_and(|d| d <= now);
            if !expired && st.waiting[i].done.is_cancelled() {
                if let Some(r) = st.waiting.remove(i) {
                    // Relaxed: statistics. Not `completed`: never computed.
                    sh.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                    drop(r);
                }
                continue;
            }
            match st.waiting[i].deadline {
                Some(d) if d <= now => {
                    if let Some(r) = st.waiting.remove(i) {
                        // Relaxed: statistics.
                        sh.counters.timed_out.fetch_add(1, Ordering::Relaxed);
                        sh.counters.completed.fetch_add(1, Ordering::Relaxed);
                        let waited = now.saturating_duration_since(r.arrived);
                        r.done.complete(Err(Error::Timeout(waited)));
                    }
                }
                d => {
                    earliest_deadline = match (earliest_deadline, d) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    i += 1;
                }
            }
        }
        let Some(oldest) = st.waiting.front() else {
            if !st.accepting {
                return None;
            }
            st.idle += 1;
            st = wait(&sh.cv, st);
            st.idle -= 1;
            continue;
        };
        let key = |r: &Request<M::Input, M::Output>| if cfg.bucket_by_length { bucket(r.len) } else { 0 };
        // Relaxed: see `Shared::limit` (written only under this lock anyway).
        let limit = sh.limit.load(Ordering::Relaxed).clamp(1, cfg.max_batch_size);
        let mut counts = [0usize; BUCKETS];
        // Per bucket: requests × longest, what a batch of all of them costs.
        let mut longest = [0usize; BUCKETS];
        for r in &st.waiting {
            counts[key(r)] += 1;
            longest[key(r)] = longest[key(r)].max(r.len);
        }
        let budget = cfg.max_batch_tokens.unwrap_or(usize::MAX);
        let full = st.waiting.iter().map(key).find(|&k| counts[k] >= limit || counts[k].saturating_mul(longest[k]) >= budget);
        let full_at = oldest.arrived + cfg.max_queue_delay;
        let chosen = match full {
            Some(k) => Some(k),
            None if !st.accepting || cfg.policy == BatchPolicy::Eager || crate::sync::passed(full_at) => Some(key(oldest)),
            None if cfg.policy == BatchPolicy::Follow && counts[key(oldest)] >= st.last_batch.min(limit) => Some(key(oldest)),
            None => None,
        };
        if let Some(k) = chosen {
            let mut n = counts[k].min(limit);
            if let Some(&p) = cfg.preferred_batch_sizes.iter().filter(|&&p| p <= n).max() {
                n = p;
            }
            let mut batch: Vec<Request<M::Input, M::Output>> = Vec::with_capacity(n);
            let mut batch_longest = 0usize;
            let mut j = 0;
            while batch.len() < n && j < st.waiting.len() {
                if key(&st.waiting[j]) == k {
                    // The token budget: stop before the request that would
                    // take the padded batch over it (the first always goes).
                    let l = batch_longest.max(st.waiting[j].len);
                    if !batch.is_empty() && (batch.len() + 1).saturating_mul(l) > budget {
                        break;
                    }
                    batch_longest = l;
                    if let Some(r) = st.waiting.remove(j) {
                        batch.push(r);
                    }
                } else {
                    j += 1;
                }
            }
            if let Some(a) = &cfg.adaptive {
                adapt(sh, a, limit, st.waiting.len(), now.saturating_duration_since(batch[0].arrived));
            }
            st.last_batch = batch.len();
            // Eager, Follow: requests left behind (another bucket, or past
            // the limit) go to another idle worker now, not when this one is free.
            let more = cfg.policy != BatchPolicy::Wait && !st.waiting.is_empty() && st.idle > 0;
            drop(st);
            if more {
                sh.cv.notify_one();
            }
            return Some(batch);
        }
        let until = earliest_deadline.map_or(full_at, |d| d.min(full_at));
        st.idle += 1;
        st = wait_until(&sh.cv, st, until);
        st.idle -= 1;
    }
}

/// Adaptive mode's rule (see [`Adaptive`]), applied after a batch is taken.
fn adapt<M: BatchModel>(sh: &Shared<M>, a: &Adaptive, limit: usize, still_waiting: usize, oldest_wait: Duration) {
    let max = sh.config.max_batch_size;
    let next = if still_waiting > 2 * limit {
        (limit * 2).min(max)
    } else if still_waiting < limit / 2 && oldest_wait < a.target_latency {
        (limit / 2).max(a.min_batch_size)
    } else {
        limit
    };
    // Relaxed: see `Shared::limit`. Called under the state lock, so two
    // workers never race on the update.
    sh.limit.store(next, Ordering::Relaxed);
}

fn run_batch<M: BatchModel>(sh: &Shared<M>, w: &mut M::Worker, batch: Vec<Request<M::Input, M::Output>>) {
    let c = &sh.counters;
    let n = batch.len();
    let start = Instant::now();
    let mut inputs = Vec::with_capacity(n);
    let mut dones = Vec::with_capacity(n);
    // Relaxed for every counter below: statistics. `completed` is added
    // before any caller is answered, so it never exceeds `submitted`.
    for r in batch {
        c.wait_ns.fetch_add(start.saturating_duration_since(r.arrived).as_nanos() as u64, Ordering::Relaxed);
        inputs.push(r.input);
        dones.push(r.done);
    }
    let permit = sh.config.throttle.as_ref().map(|t| t.acquire());
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sh.model.forward(w, inputs)));
    drop(permit);
    c.compute_ns.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    c.batches.fetch_add(1, Ordering::Relaxed);
    {
        let mut h = lock(&c.histogram);
        if h.len() < n {
            h.resize(n, 0);
        }
        h[n - 1] += 1;
    }
    c.completed.fetch_add(n as u64, Ordering::Relaxed);
    match out {
        Ok(Ok(outs)) if outs.len() == n => {
            for (d, o) in dones.into_iter().zip(outs) {
                d.complete(Ok(o));
            }
        }
        Ok(Ok(outs)) => {
            let e = Error::InvalidArgument(format!("model returned {} outputs for a batch of {n}", outs.len()));
            for d in dones {
                d.complete(Err(e.clone()));
            }
        }
        Ok(Err(e)) => {
            for d in dones {
                d.complete(Err(e.clone()));
            }
        }
        Err(p) => {
            let e = Error::JobPanicked(braid_runtime::panic_message(&p));
            for d in dones {
                d.complete(Err(e.clone()));
            }
        }
    }
}

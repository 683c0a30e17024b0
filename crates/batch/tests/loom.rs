//! loom models of the batch queue's hand-off, on the shipping code (built
//! with `--cfg loom`): every accepted job runs exactly once and its result
//! reaches exactly its caller, also across shutdown; a submit racing
//! shutdown is accepted-and-run or refused, never lost; completed never
//! exceeds submitted (NoStuckFutures, StopDrains,
//! CompletedNeverExceedsSubmitted). Run:
//! `RUSTFLAGS="--cfg loom" cargo test -p braid-batch --release --test loom -- --nocapture`
//! (preemption bound 3 by default; `LOOM_MAX_PREEMPTIONS=N` overrides it).
//! Each model prints how many interleavings it explored.
#![cfg(loom)]

use braid_batch::{BatchQueue, Handle, QueueConfig, WhenFull};
use braid_runtime::Error;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

fn explore(name: &str, bound: usize, f: impl Fn() + Sync + Send + 'static) {
    explore_capped(name, bound, usize::MAX, f)
}

/// As `explore`, but never above `cap` preemptions, whatever
/// LOOM_MAX_PREEMPTIONS says (for models whose next bound takes minutes).
fn explore_capped(name: &str, bound: usize, cap: usize, f: impl Fn() + Sync + Send + 'static) {
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let r = runs.clone();
    let mut b = loom::model::Builder::new();
    // Builder::new reads LOOM_MAX_PREEMPTIONS; keep it if set.
    let bound = (*b.preemption_bound.get_or_insert(bound)).min(cap);
    b.preemption_bound = Some(bound);
    b.check(move || {
        r.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f()
    });
    eprintln!("loom model {name}: {} interleavings explored (preemption bound {bound})", runs.load(std::sync::atomic::Ordering::Relaxed));
}

/// Two callers submit concurrently to a one-worker queue; each gets exactly
/// its own result; each job ran once.
#[test]
fn hand_off_reaches_the_right_caller() {
    explore("batch queue: 2 callers, 1 worker", 3, || {
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let q = Arc::new(BatchQueue::new(QueueConfig { workers: 1, capacity: 4, when_full: WhenFull::Block }, |_| Ok(()), move |_, x: usize| {
            r.fetch_add(1, Ordering::SeqCst);
            x * 10
        }).unwrap());
        let q2 = q.clone();
        let t = thread::spawn(move || q2.run(2).unwrap());
        assert_eq!(q.run(1).unwrap(), 10);
        assert_eq!(t.join().unwrap(), 20);
        q.shutdown();
        assert_eq!(ran.load(Ordering::SeqCst), 2);
        let st = q.stats();
        assert_eq!((st.submitted, st.completed), (2, 2));
    });
}

/// A submit racing shutdown: accepted-and-run, or refused; never lost.
#[test]
fn submit_racing_shutdown_is_run_or_refused() {
    explore("batch queue: submit vs shutdown", 3, || {
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let q = Arc::new(BatchQueue::new(QueueConfig { workers: 1, capacity: 4, when_full: WhenFull::Block }, |_| Ok(()), move |_, x: usize| {
            r.fetch_add(1, Ordering::SeqCst);
            x
        }).unwrap());
        let q2 = q.clone();
        let submitter = thread::spawn(move || match q2.submit(7) {
            Ok(h) => {
                assert_eq!(h.wait().unwrap(), 7, "accepted job lost");
                1
            }
            Err(Error::ShutDown(_)) => 0,
            Err(e) => panic!("{e}"),
        });
        q.shutdown();
        let accepted = submitter.join().unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), accepted, "ran exactly the accepted jobs");
        let st = q.stats();
        assert!(st.completed <= st.submitted);
        assert_eq!(st.submitted as usize, accepted);
    });
}

/// A handle dropped before its job runs neither wedges the worker nor loses
/// the count.
#[test]
fn dropped_handle_does_not_wedge() {
    explore("batch queue: dropped handle", 3, || {
        let q = Arc::new(BatchQueue::new(QueueConfig::default(), |_| Ok(()), |_, x: usize| x).unwrap());
        let q2 = q.clone();
        let t = thread::spawn(move || drop(q2.submit(1).unwrap()));
        assert_eq!(q.run(2).unwrap(), 2);
        t.join().unwrap();
        q.shutdown();
        assert_eq!(q.stats().completed, 2);
    });
}

/// Poll `f` until ready, parking on a loom `Notify` that its waker signals
/// (loom's own `block_on` needs its `futures` feature).
fn block_on<F: std::future::Future + Unpin>(mut f: F) -> F::Output {
    struct Wake(loom::sync::Notify);
    impl std::task::Wake for Wake {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.notify();
        }
    }
    let w = std::sync::Arc::new(Wake(loom::sync::Notify::new()));
    let waker = std::task::Waker::from(w.clone());
    let mut cx = std::task::Context::from_waker(&waker);
    loop {
        if let std::task::Poll::Ready(v) = std::pin::Pin::new(&mut f).poll(&mut cx) {
            return v;
        }
        w.0.wait();
    }
}

/// The async hand-off: a caller awaiting its handle (loom's `block_on`,
/// which parks until woken) while the worker completes it: the waker slot
/// never loses the wake-up.
#[test]
fn awaited_handle_is_woken() {
    explore("batch queue: .await vs completion", 3, || {
        let q = BatchQueue::new(QueueConfig::default(), |_| Ok(()), |_, x: usize| x + 1).unwrap();
        let h: Handle<usize> = q.submit(4).unwrap();
        assert_eq!(block_on(h).unwrap(), 5);
        q.shutdown();
    });
}

/// Two callers on a queue of capacity 1 that rejects when full: each gets
/// its own result or `Overloaded`; exactly the accepted jobs run; the
/// rejected counter matches.
#[test]
fn reject_when_full_is_run_or_overloaded() {
    explore("batch queue: reject when full", 3, || {
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let q = Arc::new(BatchQueue::new(QueueConfig { workers: 1, capacity: 1, when_full: WhenFull::Reject }, |_| Ok(()), move |_, x: usize| {
            r.fetch_add(1, Ordering::SeqCst);
            x * 10
        }).unwrap());
        let call = |q: &BatchQueue<usize, usize>, x: usize| match q.submit(x) {
            Ok(h) => {
                assert_eq!(h.wait().unwrap(), x * 10);
                1
            }
            Err(Error::Overloaded { capacity: 1 }) => 0,
            Err(e) => panic!("{e}"),
        };
        let q2 = q.clone();
        let t = thread::spawn(move || call(&q2, 2));
        let accepted = call(&q, 1) + t.join().unwrap();
        q.shutdown();
        assert!(accepted >= 1, "the queue was empty for at least the first submit");
        assert_eq!(ran.load(Ordering::SeqCst), accepted);
        let st = q.stats();
        assert_eq!((st.submitted as usize, st.rejected as usize, st.completed as usize), (accepted, 2 - accepted, accepted));
    });
}

/// Shutdown racing a caller that submits two jobs before waiting: every
/// accepted job runs once and answers its caller; once one submit is
/// refused, so is every later one.
#[test]
fn two_jobs_across_shutdown() {
    explore("batch queue: 2 jobs vs shutdown", 3, || {
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let q = Arc::new(BatchQueue::new(QueueConfig::default(), |_| Ok(()), move |_, x: usize| {
            r.fetch_add(1, Ordering::SeqCst);
            x + 100
        }).unwrap());
        let q2 = q.clone();
        let submitter = thread::spawn(move || {
            let a = q2.submit(1);
            let b = q2.submit(2);
            assert!(!(a.is_err() && b.is_ok()), "accepted after a refusal");
            let mut accepted = 0;
            for (x, h) in [(1, a), (2, b)] {
                match h {
                    Ok(h) => {
                        assert_eq!(h.wait().unwrap(), x + 100);
                        accepted += 1;
                    }
                    Err(Error::ShutDown(_)) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            accepted
        });
        q.shutdown();
        let accepted = submitter.join().unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), accepted);
        assert_eq!(q.stats().completed as usize, accepted);
    });
}

/// Two workers, two concurrent callers: each job runs once, on either
/// worker, and its result reaches its own caller.
// Bound 2 always: bound 3 explores 1,106,355 interleavings (passed
// 2026-11-25 on this code, 12 minutes on a loaded 2-core VM; most of this
// file's CI time), and the property (two workers, one wake-up each, no job
// run twice or lost) shows at bound 2.
#[test]
fn two_workers_two_callers() {
    explore_capped("batch queue: 2 workers, 2 callers", 2, 2, || {
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let q = Arc::new(BatchQueue::new(QueueConfig { workers: 2, capacity: 2, when_full: WhenFull::Block }, |i| Ok(i), move |_, x: usize| {
            r.fetch_add(1, Ordering::SeqCst);
            x * 10
        }).unwrap());
        let q2 = q.clone();
        let t = thread::spawn(move || q2.run(2).unwrap());
        assert_eq!(q.run(1).unwrap(), 10);
        assert_eq!(t.join().unwrap(), 20);
        q.shutdown();
        assert_eq!(ran.load(Ordering::SeqCst), 2);
    });
}

// ---- Batcher: gathering, buckets, deadlines, shutdown ----

use braid_batch::{BatchModel, BatchPolicy, Batcher, BatcherConfig};
use std::time::Duration;

/// Multiplies by 10; the input is also its length (for bucketing). Checks,
/// inside every forward, that a batch never mixes length buckets, and
/// records (across all explored executions) which batch sizes occurred.
struct Times10 {
    ran: Arc<AtomicUsize>,
    sizes_seen: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<usize>>>,
}

fn power_of_two_bucket(len: usize) -> u32 {
    usize::BITS - (len.max(1) - 1).leading_zeros()
}

impl BatchModel for Times10 {
    type Input = usize;
    type Output = usize;
    type Worker = ();
    fn worker(&self, _: usize) -> braid_runtime::Result<()> {
        Ok(())
    }
    fn len(&self, x: &usize) -> usize {
        *x
    }
    fn forward(&self, _: &mut (), inputs: Vec<usize>) -> braid_runtime::Result<Vec<usize>> {
        let b = power_of_two_bucket(inputs[0]);
        assert!(inputs.iter().all(|&x| power_of_two_bucket(x) == b), "a batch mixed length buckets: {inputs:?}");
        // SeqCst: a test counter read after the workers are joined (the join
        // orders it anyway); the strongest ordering keeps the model simple.
        self.ran.fetch_add(inputs.len(), Ordering::SeqCst);
        self.sizes_seen.lock().unwrap().insert(inputs.len());
        Ok(inputs.iter().map(|x| x * 10).collect())
    }
}

type Seen = std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<usize>>>;

/// A batcher with the default policy (`Eager`: an idle worker takes what is
/// queued at once, idle workers are woken one per request, and a worker
/// leaving requests behind wakes another: a lost wake-up would leave a
/// request queued with every worker asleep, which loom reports as a
/// deadlock).
fn batcher(workers: usize, max_batch_size: usize, seen: &Seen) -> (Arc<Batcher<Times10>>, Arc<AtomicUsize>) {
    batcher_with(BatchPolicy::Eager, workers, max_batch_size, seen)
}

fn batcher_with(policy: BatchPolicy, workers: usize, max_batch_size: usize, seen: &Seen) -> (Arc<Batcher<Times10>>, Arc<AtomicUsize>) {
    let ran = Arc::new(AtomicUsize::new(0));
    let model = Arc::new(Times10 { ran: ran.clone(), sizes_seen: seen.clone() });
    // `Wait`: under loom the gathering delay counts as passed whenever a
    // worker looks (loom has no clock), so both "wait for a full batch" and
    // "close what is there" are explored.
    let config = BatcherConfig { policy, max_batch_size, workers, capacity: 4, max_queue_delay: Duration::from_secs(3600), ..BatcherConfig::default() };
    (Arc::new(Batcher::new(model, config).unwrap()), ran)
}

/// Two callers whose inputs share a bucket, batch limit 2, one worker: the
/// worker gathers them into one batch or runs them one at a time, and each
/// caller gets exactly its own output; completed == submitted; the
/// histogram accounts for every request. Across the explored executions
/// both a batch of 2 and batches of 1 must have occurred (the model really
/// explores gathering).
#[test]
fn batcher_gathers_and_answers_each_caller() {
    gathers_and_answers_each_caller(BatchPolicy::Eager);
}

/// The same under the original `Wait` policy (its own wake-up rule:
/// everyone, for a first request or a full bucket).
#[test]
fn batcher_wait_policy_gathers_and_answers_each_caller() {
    gathers_and_answers_each_caller(BatchPolicy::Wait);
}

/// The same under `Follow` (eager's wake-up rule, with a gathering target).
#[test]
fn batcher_follow_policy_gathers_and_answers_each_caller() {
    gathers_and_answers_each_caller(BatchPolicy::Follow);
}

fn gathers_and_answers_each_caller(policy: BatchPolicy) {
    let seen: Seen = Default::default();
    let s = seen.clone();
    explore(&format!("batcher ({}): 2 callers, one bucket, limit 2", policy.name()), 3, move || {
        let (b, ran) = batcher_with(policy, 1, 2, &s);
        let b2 = b.clone();
        let t = thread::spawn(move || b2.infer(4).unwrap());
        assert_eq!(b.infer(3).unwrap(), 30);
        assert_eq!(t.join().unwrap(), 40);
        b.shutdown();
        assert_eq!(ran.load(Ordering::SeqCst), 2);
        let st = b.stats();
        assert_eq!((st.submitted, st.completed, st.timed_out), (2, 2, 0));
        let in_batches: u64 = st.batch_size_histogram.iter().enumerate().map(|(i, n)| (i as u64 + 1) * n).sum();
        assert_eq!(in_batches, 2);
        assert!(st.batches == 1 || st.batches == 2);
    });
    let seen = seen.lock().unwrap();
    assert!(seen.contains(&1) && seen.contains(&2), "explored batch sizes {seen:?}");
}

/// Two workers, two callers in different length buckets (1 and 100): a
/// batch never mixes buckets (asserted in `forward`), each caller gets its
/// own output, each request runs once.
#[test]
fn batcher_two_workers_never_mix_buckets() {
    let seen: Seen = Default::default();
    let s = seen.clone();
    // Bound 2 always: bound 3 explores 3,558,819 interleavings (passed
    // once, about 4 minutes), too long for every CI run.
    explore_capped("batcher: 2 workers, 2 buckets", 2, 2, move || {
        let (b, ran) = batcher(2, 2, &s);
        let b2 = b.clone();
        let t = thread::spawn(move || b2.infer(100).unwrap());
        assert_eq!(b.infer(1).unwrap(), 10);
        assert_eq!(t.join().unwrap(), 1000);
        b.shutdown();
        assert_eq!(ran.load(Ordering::SeqCst), 2);
        assert_eq!(b.stats().batches, 2);
    });
}

/// A submit racing shutdown: accepted-and-run (its caller gets its output)
/// or refused with `ShutDown`; never lost; completed == submitted after.
#[test]
fn batcher_submit_racing_shutdown_is_run_or_refused() {
    let seen: Seen = Default::default();
    let s = seen.clone();
    explore("batcher: submit vs shutdown", 3, move || {
        let (b, ran) = batcher(1, 2, &s);
        let b2 = b.clone();
        let submitter = thread::spawn(move || match b2.submit(5) {
            Ok(h) => {
                assert_eq!(h.wait().unwrap(), 50, "accepted request lost");
                1
            }
            Err(Error::ShutDown(_)) => 0,
            Err(e) => panic!("{e}"),
        });
        b.shutdown();
        let accepted = submitter.join().unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), accepted);
        let st = b.stats();
        assert_eq!((st.submitted as usize, st.completed as usize), (accepted, accepted));
    });
}

/// A request whose deadline has passed when a worker gathers is answered
/// `Timeout` and never run, while a request without a deadline racing it
/// is run and answered; both are counted as completed, one as timed out.
#[test]
fn batcher_expired_request_gets_timeout_never_runs() {
    let seen: Seen = Default::default();
    let s = seen.clone();
    explore("batcher: expired vs live request", 3, move || {
        let (b, ran) = batcher(1, 2, &s);
        let b2 = b.clone();
        let t = thread::spawn(move || b2.submit_with_deadline(2, Some(Duration::ZERO)).unwrap().wait());
        assert_eq!(b.infer(3).unwrap(), 30);
        assert!(matches!(t.join().unwrap(), Err(Error::Timeout(_))), "an expired request must answer Timeout");
        b.shutdown();
        assert_eq!(ran.load(Ordering::SeqCst), 1, "the expired request must not run");
        let st = b.stats();
        assert_eq!((st.submitted, st.completed, st.timed_out), (2, 2, 1));
    });
}

/// Cancellation: a caller drops its handle while another caller's request
/// is gathered. The dropped request is either skipped (counted
/// `cancelled`, never run) or, if its batch had already started, run with
/// its answer discarded; never both, never lost: submitted == completed +
/// cancelled, and runs == 1 (the live one) + (1 − cancelled). The live
/// caller always gets its own output. Across the explored executions both
/// outcomes must occur.
#[test]
fn batcher_dropped_handle_is_skipped_or_run_never_lost() {
    let seen: Seen = Default::default();
    let s = seen.clone();
    let outcomes: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<u64>>> = Default::default();
    let o = outcomes.clone();
    explore("batcher: dropped handle vs gathering", 3, move || {
        let (b, ran) = batcher(1, 2, &s);
        let b2 = b.clone();
        let t = thread::spawn(move || drop(b2.submit(2).unwrap()));
        assert_eq!(b.infer(3).unwrap(), 30);
        t.join().unwrap();
        b.shutdown();
        let st = b.stats();
        assert!(st.cancelled <= 1);
        assert_eq!(st.submitted, st.completed + st.cancelled, "a request was lost: {st:?}");
        assert_eq!(ran.load(Ordering::SeqCst) as u64, 2 - st.cancelled, "a cancelled request ran, or a kept one did not");
        o.lock().unwrap().insert(st.cancelled);
    });
    let outcomes = outcomes.lock().unwrap();
    assert!(outcomes.contains(&0) && outcomes.contains(&1), "explored outcomes {outcomes:?}");
}

/// All-or-nothing admission: a group of 4 against capacity 4 racing a
/// single submit: every accepted request runs and reaches its caller; the
/// group is accepted whole or refused whole (`Overloaded`, all counted
/// rejected), never split. Both outcomes must occur across the explored
/// executions.
#[test]
fn batcher_group_admitted_whole_or_not_at_all() {
    let seen: Seen = Default::default();
    let s = seen.clone();
    let outcomes: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<usize>>> = Default::default();
    let o = outcomes.clone();
    explore("batcher: group admission vs single submit", 2, move || {
        let (b, ran) = batcher(1, 4, &s);
        let b2 = b.clone();
        let t = thread::spawn(move || b2.submit(1).map(|h| h.wait().unwrap()));
        let group = match b.submit_all(vec![2, 3, 4, 4]) {
            Ok(hs) => {
                let outs: Vec<usize> = hs.into_iter().map(|h| h.wait().unwrap()).collect();
                assert_eq!(outs, vec![20, 30, 40, 40]);
                4
            }
            Err(Error::Overloaded { .. }) => 0,
            Err(e) => panic!("{e}"),
        };
        let single = match t.join().unwrap() {
            Ok(v) => {
                assert_eq!(v, 10);
                1
            }
            Err(Error::Overloaded { .. }) => 0,
            Err(e) => panic!("{e}"),
        };
        b.shutdown();
        let st = b.stats();
        assert_eq!(ran.load(Ordering::SeqCst), group + single);
        assert_eq!((st.submitted, st.completed, st.rejected), ((group + single) as u64, (group + single) as u64, (5 - group - single) as u64));
        o.lock().unwrap().insert(group);
    });
    let outcomes = outcomes.lock().unwrap();
    assert!(outcomes.contains(&0) && outcomes.contains(&4), "explored group outcomes {outcomes:?}");
}

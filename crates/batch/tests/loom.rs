//! loom models of the batch queue's hand-off, on the shipping code (built
//! with `--cfg loom`): every accepted job runs exactly once and its result
//! reaches exactly its caller, also across shutdown; a submit racing
//! shutdown is accepted-and-run or refused, never lost; completed never
//! exceeds submitted (NoStuckFutures, StopDrains,
//! CompletedNeverExceedsSubmitted). Run:
//! `RUSTFLAGS="--cfg loom" cargo test -p braid-batch --release --test loom -- --nocapture`
#![cfg(loom)]

use braid_batch::{BatchQueue, QueueConfig, WhenFull};
use braid_runtime::Error;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

fn explore(name: &str, bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let r = runs.clone();
    let mut b = loom::model::Builder::new();
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

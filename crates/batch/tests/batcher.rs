#![cfg(not(loom))]
//! The dynamic batcher with a deterministic toy model (the sum of each
//! padded input): batched results equal unbatched for every caller,
//! including mixed lengths; bucketing, preferred sizes, deadlines, overload,
//! shutdown under load, 256 concurrent callers, model errors and panics;
//! both batch policies (`Eager`, the default, and the original's `Wait`).

use braid_batch::{Adaptive, BatchModel, BatchPolicy, Batcher, BatcherConfig};
use braid_runtime::{Error, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Output for input v: (sum of v, len of v, batch size it ran in). Pads
/// every input to the batch's longest with zeros, as a real model would.
#[derive(Default)]
struct Sum {
    /// (batch size, longest, shortest) of each forward.
    batches: Mutex<Vec<(usize, usize, usize)>>,
    delay: Duration,
    fail_on: Option<f32>,
    /// A batch holding an input that starts with `GATE` waits here until
    /// the test opens it (so tests queue requests behind a busy worker
    /// without relying on timing).
    gate: Gate,
}

const GATE: f32 = -7.0;

#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
    /// A gated forward is running.
    entered: Mutex<bool>,
    entered_cv: Condvar,
}

impl Gate {
    fn pass(&self) {
        *self.entered.lock().unwrap() = true;
        self.entered_cv.notify_all();
        let mut o = self.open.lock().unwrap();
        while !*o {
            o = self.cv.wait(o).unwrap();
        }
    }
    fn wait_entered(&self) {
        let mut e = self.entered.lock().unwrap();
        while !*e {
            e = self.entered_cv.wait(e).unwrap();
        }
    }
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

impl BatchModel for Sum {
    type Input = Vec<f32>;
    type Output = (f32, usize, usize);
    type Worker = ();
    fn worker(&self, _: usize) -> Result<()> {
        Ok(())
    }
    fn len(&self, x: &Vec<f32>) -> usize {
        x.len()
    }
    fn forward(&self, _: &mut (), xs: Vec<Vec<f32>>) -> Result<Vec<(f32, usize, usize)>> {
        std::thread::sleep(self.delay);
        if xs.iter().any(|x| x.first() == Some(&GATE)) {
            self.gate.pass();
        }
        let longest = xs.iter().map(|x| x.len()).max().unwrap_or(0);
        let shortest = xs.iter().map(|x| x.len()).min().unwrap_or(0);
        self.batches.lock().unwrap().push((xs.len(), longest, shortest));
        if let Some(bad) = self.fail_on {
            if xs.iter().any(|x| x.first() == Some(&bad)) {
                panic!("poisoned input {bad}");
            }
        }
        let n = xs.len();
        Ok(xs
            .into_iter()
            .map(|mut x| {
                let len = x.len();
                x.resize(longest, 0.0);
                (x.iter().sum(), len, n)
            })
            .collect())
    }
}

fn input(caller: usize, i: usize) -> Vec<f32> {
    let len = 1 + (caller * 7 + i * 3) % 40;
    (0..len).map(|j| (caller * 31 + i * 17 + j) as f32 * 0.25).collect()
}

#[test]
fn batched_equals_unbatched_for_256_callers_with_mixed_lengths() {
    let model = Arc::new(Sum::default());
    let b = Batcher::new(model.clone(), BatcherConfig { max_batch_size: 32, max_queue_delay: Duration::from_millis(2), ..Default::default() }).unwrap();
    std::thread::scope(|s| {
        for c in 0..256 {
            let b = &b;
            s.spawn(move || {
                for i in 0..10 {
                    let x = input(c, i);
                    let want: f32 = x.iter().sum();
                    let (got, len, _) = b.infer(x.clone()).unwrap();
                    assert_eq!(len, x.len(), "caller {c} got another caller's result");
                    assert_eq!(got.to_bits(), want.to_bits(), "caller {c} request {i}");
                }
            });
        }
    });
    let st = b.stats();
    assert_eq!((st.submitted, st.completed), (2560, 2560));
    // Bucketing: no batch mixes lengths from different power-of-two buckets.
    for &(n, longest, shortest) in model.batches.lock().unwrap().iter() {
        assert!(n <= 32);
        assert_eq!(longest.next_power_of_two(), shortest.next_power_of_two(), "batch mixed buckets {shortest}..{longest}");
    }
    eprintln!("256 callers x 10: {} batches, mean batch {:.1}", st.batches, st.mean_batch_size);
}

#[test]
fn requests_queued_behind_a_busy_worker_share_one_batch() {
    let model = Arc::new(Sum::default());
    let b = Batcher::new(model.clone(), BatcherConfig { max_batch_size: 8, policy: BatchPolicy::Wait, max_queue_delay: Duration::from_secs(60), ..Default::default() }).unwrap();
    // Shutdown (at the end) drains at once, so the 60 s delay is never waited out.
    let gated: Vec<_> = (0..8).map(|i| b.submit(if i == 0 { vec![GATE] } else { vec![i as f32] }).unwrap()).collect();
    model.gate.wait_entered();
    let hs: Vec<_> = (0..20).map(|i| b.submit(vec![100.0 + i as f32]).unwrap()).collect();
    model.gate.open();
    let mut hs = hs.into_iter();
    // Two full batches go at once; the last 4 wait for the delay...
    for (i, h) in hs.by_ref().take(16).enumerate() {
        assert_eq!(h.wait().unwrap().0, 100.0 + i as f32);
    }
    // ...which shutdown cuts short.
    b.shutdown();
    for (i, h) in hs.enumerate() {
        assert_eq!(h.wait().unwrap().0, 116.0 + i as f32);
    }
    for h in gated {
        h.wait().unwrap();
    }
    let sizes: Vec<usize> = model.batches.lock().unwrap().iter().map(|b| b.0).collect();
    // 8 gated, then the 20 queued behind it: two full batches, then the
    // remaining 4 at shutdown.
    assert_eq!(sizes, vec![8, 8, 8, 4]);
    let st = b.stats();
    assert_eq!(st.batch_size_histogram[7], 3);
    assert_eq!(st.mean_batch_size, 28.0 / 4.0);
}

#[test]
fn full_batches_are_cut_to_preferred_sizes_and_a_lone_request_goes_after_the_delay() {
    let model = Arc::new(Sum::default());
    let b = Batcher::new(model.clone(), BatcherConfig { max_batch_size: 8, policy: BatchPolicy::Wait, max_queue_delay: Duration::from_secs(60), preferred_batch_sizes: vec![4], ..Default::default() }).unwrap();
    let hs: Vec<_> = (0..8).map(|i| b.submit(vec![i as f32]).unwrap()).collect();
    // The first 4 leave as soon as 8 are waiting; the other 4 wait out the
    // delay, cut short by shutdown.
    b.shutdown();
    for (i, h) in hs.into_iter().enumerate() {
        assert_eq!(h.wait().unwrap().0, i as f32);
    }
    let sizes: Vec<usize> = model.batches.lock().unwrap().iter().map(|b| b.0).collect();
    assert_eq!(sizes, vec![4, 4]);
    // A lone request still goes after max_queue_delay.
    let b = Batcher::new(Arc::new(Sum::default()), BatcherConfig { max_batch_size: 8, policy: BatchPolicy::Wait, max_queue_delay: Duration::from_millis(5), ..Default::default() }).unwrap();
    assert_eq!(b.infer(vec![5.0]).unwrap(), (5.0, 1, 1));
}

#[test]
fn a_full_bucket_does_not_wait_behind_an_older_request_of_another_bucket() {
    let model = Arc::new(Sum::default());
    let b = Batcher::new(model.clone(), BatcherConfig { max_batch_size: 4, policy: BatchPolicy::Wait, max_queue_delay: Duration::from_secs(60), ..Default::default() }).unwrap();
    let long = b.submit(vec![1.0; 100]).unwrap();
    let short: Vec<_> = (0..4).map(|i| b.submit(vec![i as f32, 1.0]).unwrap()).collect();
    for (i, h) in short.into_iter().enumerate() {
        assert_eq!(h.wait().unwrap(), (i as f32 + 1.0, 2, 4));
    }
    assert!(!long.is_ready(), "the lone long request waits for company (or the 60 s delay)");
    b.shutdown();
    assert_eq!(long.wait().unwrap(), (100.0, 100, 1));
}

#[test]
fn expired_requests_get_timeout() {
    let model = Arc::new(Sum { delay: Duration::from_millis(100), ..Default::default() });
    let b = Batcher::new(model, BatcherConfig { max_batch_size: 1, max_queue_delay: Duration::ZERO, ..Default::default() }).unwrap();
    // The first occupies the worker for 100 ms; the second's 10 ms deadline passes while it waits.
    let first = b.submit(vec![1.0]).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let second = b.submit_with_deadline(vec![2.0], Some(Duration::from_millis(10))).unwrap();
    assert_eq!(first.wait().unwrap().0, 1.0);
    assert!(matches!(second.wait(), Err(Error::Timeout(_))));
    b.shutdown();
    assert_eq!(b.stats().timed_out, 1, "the worker answered the expired request with Timeout too");
    assert_eq!(model_batches(&b), 1, "the expired request never ran");
}

fn model_batches(b: &Batcher<Sum>) -> u64 {
    b.stats().batches
}

#[test]
fn the_caller_gets_timeout_at_its_deadline_while_the_worker_is_busy() {
    let model = Arc::new(Sum::default());
    let b = Batcher::new(model.clone(), BatcherConfig { max_batch_size: 1, max_queue_delay: Duration::ZERO, ..Default::default() }).unwrap();
    let busy = b.submit(vec![GATE]).unwrap();
    model.gate.wait_entered();
    // The worker is held until this caller's deadline has passed: only the
    // caller-side deadline can answer it.
    let late = b.submit_with_deadline(vec![2.0], Some(Duration::from_millis(10))).unwrap();
    assert!(matches!(late.wait(), Err(Error::Timeout(d)) if d == Duration::from_millis(10)));
    model.gate.open();
    busy.wait().unwrap();
    b.shutdown();
    let st = b.stats();
    assert_eq!((st.timed_out, st.batches, st.completed, st.submitted), (1, 1, 2, 2));
}

#[test]
fn adaptive_limit_halves_under_light_load_and_doubles_under_a_backlog() {
    let model = Arc::new(Sum::default());
    let cfg = BatcherConfig { max_batch_size: 16, max_queue_delay: Duration::ZERO, adaptive: Some(Adaptive { min_batch_size: 2, target_latency: Duration::from_secs(600) }), ..Default::default() };
    let b = Batcher::new(model.clone(), cfg).unwrap();
    for i in 0..4 {
        b.infer(vec![i as f32]).unwrap(); // alone each time: 16 -> 8 -> 4 -> 2 -> 2
    }
    assert_eq!(b.stats().batch_limit, 2);
    let busy = b.submit(vec![GATE]).unwrap();
    model.gate.wait_entered();
    let hs: Vec<_> = (0..20).map(|i| b.submit(vec![i as f32]).unwrap()).collect();
    model.gate.open();
    busy.wait().unwrap();
    for (i, h) in hs.into_iter().enumerate() {
        assert_eq!(h.wait().unwrap().0, i as f32);
    }
    let sizes: Vec<usize> = model.batches.lock().unwrap().iter().map(|b| b.0).collect();
    // backlog 20 at limit 2: 2 (18 left > 4: double), 4 (14 > 8: double), 8, then the last 6.
    assert_eq!(sizes, vec![1, 1, 1, 1, 1, 2, 4, 8, 6]);
    assert_eq!(b.stats().batch_limit, 4);
}

#[test]
fn throttle_is_held_around_each_forward() {
    let t = braid_runtime::Throttle::new(Some(1));
    let b = Batcher::new(Arc::new(Sum::default()), BatcherConfig { workers: 3, max_queue_delay: Duration::ZERO, throttle: Some(t.clone()), ..Default::default() }).unwrap();
    std::thread::scope(|s| {
        for c in 0..8 {
            let b = &b;
            s.spawn(move || {
                for i in 0..20 {
                    let x = input(c, i);
                    assert_eq!(b.infer(x.clone()).unwrap().0, x.iter().sum::<f32>());
                }
            });
        }
    });
    assert_eq!((t.in_flight(), t.peak()), (0, 1));
}

#[test]
fn overload_and_shutdown_lose_nothing_accepted() {
    let model = Arc::new(Sum { delay: Duration::from_millis(1), ..Default::default() });
    let b = Arc::new(Batcher::new(model, BatcherConfig { max_batch_size: 4, capacity: 16, max_queue_delay: Duration::from_micros(100), ..Default::default() }).unwrap());
    let answered = AtomicUsize::new(0);
    let (overloaded, refused, accepted) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|s| {
        for c in 0..64 {
            let (b, answered, overloaded, refused, accepted) = (b.clone(), &answered, &overloaded, &refused, &accepted);
            s.spawn(move || {
                for i in 0..50 {
                    match b.submit(input(c, i)) {
                        Ok(h) => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            h.wait().unwrap();
                            answered.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(Error::Overloaded { capacity: 16 }) => {
                            overloaded.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(Error::ShutDown(_)) => {
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(30));
        b.shutdown();
    });
    let a = accepted.load(Ordering::SeqCst);
    assert_eq!(answered.load(Ordering::SeqCst), a, "an accepted request was lost");
    assert_eq!(a + overloaded.load(Ordering::SeqCst) + refused.load(Ordering::SeqCst), 64 * 50);
    assert_eq!(b.stats().rejected as usize, overloaded.load(Ordering::SeqCst));
    eprintln!("accepted {a}, overloaded {}, refused after shutdown {}", overloaded.load(Ordering::SeqCst), refused.load(Ordering::SeqCst));
}

#[test]
fn model_panic_reaches_every_caller_of_the_batch_and_batcher_survives() {
    let model = Arc::new(Sum { fail_on: Some(-1.0), ..Default::default() });
    let b = Batcher::new(model, BatcherConfig { max_batch_size: 4, policy: BatchPolicy::Wait, max_queue_delay: Duration::from_millis(50), ..Default::default() }).unwrap();
    let bad = b.submit(vec![-1.0]).unwrap();
    let other = b.submit(vec![3.0]).unwrap();
    assert!(matches!(bad.wait(), Err(Error::JobPanicked(_))));
    assert!(matches!(other.wait(), Err(Error::JobPanicked(_))), "its batch-mate shares the failure");
    assert_eq!(b.infer(vec![2.0]).unwrap().0, 2.0);
}

#[test]
fn bad_config_is_an_error() {
    let m = Arc::new(Sum::default());
    assert!(Batcher::new(m.clone(), BatcherConfig { max_batch_size: 0, ..Default::default() }).is_err());
    assert!(Batcher::new(m, BatcherConfig { preferred_batch_sizes: vec![99], ..Default::default() }).is_err());
}

/// A model whose worker `fail` cannot start: with an error, or by panicking.
struct StartFails {
    fail: usize,
    panic: bool,
}

impl BatchModel for StartFails {
    type Input = u32;
    type Output = u32;
    type Worker = ();
    fn worker(&self, i: usize) -> Result<()> {
        if i == self.fail {
            if self.panic {
                panic!("worker {i} cannot start");
            }
            return Err(Error::InvalidArgument(format!("worker {i} has no stream")));
        }
        Ok(())
    }
    fn forward(&self, _: &mut (), xs: Vec<u32>) -> Result<Vec<u32>> {
        Ok(xs)
    }
}

/// A worker that cannot start makes `Batcher::new` return its error (or
/// `JobPanicked` if it panicked), and the workers that did start are shut
/// down (the call returns, nothing hangs).
#[test]
fn worker_start_failure_is_returned_not_hung() {
    let config = || BatcherConfig { workers: 3, ..BatcherConfig::default() };
    match Batcher::new(Arc::new(StartFails { fail: 1, panic: false }), config()) {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("worker 1"), "{m}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a worker failed to start, yet the batcher was built"),
    }
    match Batcher::new(Arc::new(StartFails { fail: 2, panic: true }), config()) {
        Err(Error::JobPanicked(_)) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a worker panicked while starting, yet the batcher was built"),
    }
    let b = Batcher::new(Arc::new(StartFails { fail: 99, panic: false }), config()).unwrap();
    assert_eq!(b.infer(7).unwrap(), 7);
}

/// Cancellation: requests whose handles are dropped while they wait behind
/// a busy worker are skipped (counted `cancelled`, never computed); the
/// kept ones run; submitted == completed + cancelled.
#[test]
fn dropped_handles_are_cancelled_never_computed() {
    let model = Arc::new(Sum::default());
    let b = Batcher::new(model.clone(), BatcherConfig { max_batch_size: 4, max_queue_delay: Duration::from_millis(1), ..Default::default() }).unwrap();
    let busy = b.submit(vec![GATE]).unwrap();
    model.gate.wait_entered();
    // 40 queued behind the gate; every other one's caller goes away.
    let mut kept = Vec::new();
    for i in 0..40 {
        let h = b.submit(vec![1000.0 + i as f32]).unwrap();
        if i % 2 == 0 {
            kept.push((i, h));
        } else {
            drop(h);
        }
    }
    model.gate.open();
    busy.wait().unwrap();
    for (i, h) in kept {
        assert_eq!(h.wait().unwrap().0, 1000.0 + i as f32);
    }
    b.shutdown();
    let st = b.stats();
    assert_eq!((st.submitted, st.completed, st.cancelled), (41, 21, 20), "{st:?}");
    let computed: usize = model.batches.lock().unwrap().iter().map(|&(n, _, _)| n).sum();
    assert_eq!(computed, 21, "a cancelled request was computed");
}

/// `submit_all`: a group that does not fit is refused whole (nothing of it
/// queued, all of it counted rejected); one that fits is queued whole.
#[test]
fn submit_all_admits_a_group_whole_or_not_at_all() {
    let model = Arc::new(Sum::default());
    let b = Batcher::new(model.clone(), BatcherConfig { max_batch_size: 8, capacity: 5, max_queue_delay: Duration::from_millis(1), ..Default::default() }).unwrap();
    let busy = b.submit(vec![GATE]).unwrap();
    model.gate.wait_entered();
    let three = b.submit_all(vec![vec![1.0], vec![2.0], vec![3.0]]).unwrap();
    assert!(matches!(b.submit_all(vec![vec![4.0], vec![5.0], vec![6.0]]), Err(Error::Overloaded { capacity: 5 })));
    assert_eq!(b.stats().queue_depth, 3, "a refused group left texts in the queue");
    let two = b.submit_all(vec![vec![7.0], vec![8.0]]).unwrap();
    model.gate.open();
    busy.wait().unwrap();
    let got: Vec<f32> = three.into_iter().chain(two).map(|h| h.wait().unwrap().0).collect();
    assert_eq!(got, vec![1.0, 2.0, 3.0, 7.0, 8.0]);
    let st = b.stats();
    assert_eq!((st.submitted, st.completed, st.rejected), (6, 6, 3));
}

/// `max_batch_tokens`: no batch holds more than the budget in padded
/// tokens (texts × longest), except a single request longer than it; every
/// caller still gets its own answer.
#[test]
fn batches_stay_within_the_token_budget() {
    let model = Arc::new(Sum::default());
    let budget = 64;
    let b = Batcher::new(model.clone(), BatcherConfig { max_batch_size: 64, max_batch_tokens: Some(budget), max_queue_delay: Duration::from_millis(5), ..Default::default() }).unwrap();
    std::thread::scope(|s| {
        for c in 0..32 {
            let b = &b;
            s.spawn(move || {
                for i in 0..8 {
                    let x = input(c, i);
                    let want: f32 = x.iter().sum();
                    assert_eq!(b.infer(x).unwrap().0.to_bits(), want.to_bits());
                }
            });
        }
        // One over the budget on its own.
        assert_eq!(b.infer(vec![1.0; 100]).unwrap().1, 100);
    });
    for &(n, longest, _) in model.batches.lock().unwrap().iter() {
        assert!(n * longest <= budget || n == 1, "a batch of {n} x {longest} tokens is over the budget {budget}");
    }
    assert!(Batcher::new(Arc::new(Sum::default()), BatcherConfig { max_batch_tokens: Some(0), ..Default::default() }).is_err());
}

/// Eager (the default): a lone request starts at once although the delay is
/// a minute (the bounded wait below is a hang guard, not a timing: under
/// `Wait` the same request would sit out the 60 s); requests that arrive
/// while the worker is busy gather and leave together when it is free,
/// full batches first, the rest at once (no delay waited out).
#[test]
fn eager_starts_at_once_and_gathers_only_behind_a_busy_worker() {
    let model = Arc::new(Sum::default());
    let b = Batcher::new(model.clone(), BatcherConfig { max_batch_size: 8, max_queue_delay: Duration::from_secs(60), ..Default::default() }).unwrap();
    assert_eq!(b.submit(vec![5.0]).unwrap().wait_timeout(Duration::from_secs(30)).unwrap(), (5.0, 1, 1));
    let busy = b.submit(vec![GATE]).unwrap();
    model.gate.wait_entered();
    let hs: Vec<_> = (0..20).map(|i| b.submit(vec![100.0 + i as f32]).unwrap()).collect();
    model.gate.open();
    busy.wait().unwrap();
    for (i, h) in hs.into_iter().enumerate() {
        assert_eq!(h.wait_timeout(Duration::from_secs(30)).unwrap().0, 100.0 + i as f32, "request {i}");
    }
    let sizes: Vec<usize> = model.batches.lock().unwrap().iter().map(|b| b.0).collect();
    assert_eq!(sizes, vec![1, 1, 8, 8, 4]);
    let st = b.stats();
    assert_eq!((st.submitted, st.completed, st.batches), (22, 22, 5));
}

/// Eager with two workers: while one is busy, the other takes a new
/// request at once (it does not wait for company), and a group spanning two
/// buckets is run, one batch per bucket, while the first is still busy.
#[test]
fn eager_idle_worker_starts_while_another_is_busy() {
    let model = Arc::new(Sum::default());
    let b = Batcher::new(model.clone(), BatcherConfig { workers: 2, max_batch_size: 8, max_queue_delay: Duration::from_secs(60), ..Default::default() }).unwrap();
    let busy = b.submit(vec![GATE]).unwrap();
    model.gate.wait_entered();
    // The gate is still closed: only the second worker can answer these.
    assert_eq!(b.submit(vec![3.0]).unwrap().wait_timeout(Duration::from_secs(30)).unwrap(), (3.0, 1, 1));
    let group = b.submit_all(vec![vec![1.0; 100], vec![2.0, 2.0], vec![1.0; 90]]).unwrap();
    let got: Vec<_> = group.into_iter().map(|h| h.wait_timeout(Duration::from_secs(30)).unwrap()).collect();
    assert_eq!(got, vec![(100.0, 100, 2), (4.0, 2, 1), (90.0, 90, 2)]);
    assert!(!busy.is_ready());
    model.gate.open();
    busy.wait().unwrap();
}

#[test]
fn batch_policy_parses_or_names_the_choices() {
    assert_eq!("eager".parse::<BatchPolicy>().unwrap(), BatchPolicy::Eager);
    assert_eq!(" WAIT ".parse::<BatchPolicy>().unwrap(), BatchPolicy::Wait);
    assert_eq!("follow".parse::<BatchPolicy>().unwrap(), BatchPolicy::Follow);
    match "soon".parse::<BatchPolicy>() {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("soon") && m.contains("eager") && m.contains("wait") && m.contains("follow"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(BatcherConfig::default().policy, BatchPolicy::Eager);
}

/// Follow: a lone request starts at once (the last batch held 1); after a
/// batch of 4, the next batch waits (up to the delay, here a minute) until
/// its bucket holds 4 again, so 4 callers answered together and coming back
/// one by one are not split into several forwards (under `Eager` the first
/// one back would go alone).
#[test]
fn follow_waits_for_as_many_as_the_last_batch() {
    let model = Arc::new(Sum::default());
    let b = Batcher::new(model.clone(), BatcherConfig { max_batch_size: 8, policy: BatchPolicy::Follow, max_queue_delay: Duration::from_secs(60), ..Default::default() }).unwrap();
    let busy = b.submit(vec![GATE]).unwrap();
    model.gate.wait_entered();
    let four: Vec<_> = (0..4).map(|i| b.submit(vec![i as f32]).unwrap()).collect();
    model.gate.open();
    busy.wait_timeout(Duration::from_secs(30)).unwrap();
    for h in four {
        h.wait_timeout(Duration::from_secs(30)).unwrap();
    }
    // One by one, as closed-loop clients come back.
    let again: Vec<_> = (0..4)
        .map(|i| {
            let h = b.submit(vec![10.0 + i as f32]).unwrap();
            std::thread::sleep(Duration::from_millis(2));
            h
        })
        .collect();
    for (i, h) in again.into_iter().enumerate() {
        assert_eq!(h.wait_timeout(Duration::from_secs(30)).unwrap().0, 10.0 + i as f32);
    }
    let sizes: Vec<usize> = model.batches.lock().unwrap().iter().map(|b| b.0).collect();
    assert_eq!(sizes, vec![1, 4, 4]);
}

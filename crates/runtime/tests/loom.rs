//! loom models of the runtime's concurrency, run on the shipping code (the
//! crate is built with `--cfg loom`, which swaps `crate::sync` to loom's
//! types). Run: `RUSTFLAGS="--cfg loom" cargo test -p braid-runtime --release --test loom`.
//! Each model prints the interleavings it explored.
#![cfg(loom)]

use braid_runtime::alloc::{AllocConfig, CachingAllocator, Fence, MemorySource};
use braid_runtime::event_state::EventState;
use braid_runtime::freelist::{AcquireError, Freelist};
use braid_runtime::throttle::Throttle;
use braid_runtime::Result;
use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use std::time::Duration;

fn explore(name: &str, max_preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let r = runs.clone();
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(max_preemptions);
    b.check(move || {
        r.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f()
    });
    eprintln!("loom model {name}: {} interleavings explored (preemption bound {max_preemptions})", runs.load(std::sync::atomic::Ordering::Relaxed));
}

/// MutualExclusion, PoolIntegrity, ReleaseAlwaysSucceeds, Progress and
/// DeadlockFree: three threads contend for two slots with wait-forever;
/// no slot is ever held by two threads, every thread gets a slot (a lost
/// wake-up would be a deadlock, which loom reports), all slots are back at
/// the end.
#[test]
fn freelist_mutual_exclusion_and_progress() {
    explore("freelist: 3 threads, 2 slots, wait forever", 3, || {
        let fl = Arc::new(Freelist::new(2).unwrap());
        let held: Arc<[AtomicBool; 2]> = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
        let ths: Vec<_> = (0..3)
            .map(|_| {
                let (fl, held) = (fl.clone(), held.clone());
                thread::spawn(move || {
                    let s = fl.acquire_wait(None).unwrap();
                    assert!(!held[s].swap(true, Ordering::SeqCst), "slot {s} held by two threads");
                    held[s].store(false, Ordering::SeqCst);
                    assert!(fl.release(s), "released a slot that was free");
                })
            })
            .collect();
        for t in ths {
            t.join().unwrap();
        }
        assert_eq!(fl.free_count(), 2, "every slot back after all threads exit");
    });
}

/// Fail policy: of two threads racing for one slot while a third holds
/// none, a thread either gets a free slot or finds none; never both bound.
#[test]
fn freelist_try_acquire_exclusive() {
    explore("freelist: try_acquire, 2 threads, 1 slot", 4, || {
        let fl = Arc::new(Freelist::new(1).unwrap());
        let got = Arc::new(AtomicUsize::new(0));
        let ths: Vec<_> = (0..2)
            .map(|_| {
                let (fl, got) = (fl.clone(), got.clone());
                thread::spawn(move || {
                    if let Some(s) = fl.try_acquire() {
                        assert_eq!(got.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                        got.fetch_sub(1, Ordering::SeqCst);
                        fl.release(s);
                    }
                })
            })
            .collect();
        for t in ths {
            t.join().unwrap();
        }
        assert_eq!(fl.free_count(), 1);
    });
}

/// BoundedWait: a waiter with a timeout either binds (woken by the release)
/// or times out; it never waits forever, and a timed-out waiter holds no slot.
#[test]
fn freelist_bounded_wait() {
    explore("freelist: bounded wait vs release", 4, || {
        let fl = Arc::new(Freelist::new(1).unwrap());
        let s = fl.try_acquire().unwrap();
        let f2 = fl.clone();
        let waiter = thread::spawn(move || match f2.acquire_wait(Some(Duration::from_millis(5))) {
            Ok(s) => {
                f2.release(s);
                true
            }
            Err(AcquireError::Exhausted { .. }) => false,
        });
        fl.release(s);
        let _bound = waiter.join().unwrap();
        assert_eq!(fl.free_count(), 1, "no slot held after the waiter finished");
    });
}

/// Event ordering: work before a record is visible to a thread whose wait on
/// the event returned; the completed counter never goes backwards; a wait
/// issued before a later record is not extended by it.
#[test]
fn event_record_wait_ordering() {
    explore("event: record/complete/wait", 4, || {
        let ev = Arc::new(EventState::new());
        let data = Arc::new(AtomicU64::new(0));
        let g1 = ev.record();
        let (e2, d2) = (ev.clone(), data.clone());
        let stream = thread::spawn(move || {
            // the "stream": do the work, then reach the record
            d2.store(42, Ordering::Relaxed);
            e2.complete(g1);
        });
        let (e3, d3) = (ev.clone(), data.clone());
        let waiter = thread::spawn(move || {
            let target = e3.target();
            e3.wait(target, None).unwrap();
            if target >= 1 {
                // Relaxed load: visibility comes from the event's mutex.
                assert_eq!(d3.load(Ordering::Relaxed), 42, "work before the record not visible after the wait");
            }
            let seen = e3.completed();
            let again = e3.completed();
            assert!(again >= seen, "completed went backwards");
        });
        stream.join().unwrap();
        waiter.join().unwrap();
        // an event completed out of order (re-recorded elsewhere) keeps the max
        ev.complete(0);
        assert_eq!(ev.completed(), 1);
    });
}

/// The CPU stream's progress handshake (`backend::cpu::progress`): the
/// executor completes two jobs (the second fails) while a waiter, which
/// checks the atomic count before it sleeps, waits for both: it sees the first
/// job's output, gets the error exactly once, and never sleeps through the
/// last completion (loom reports a deadlock if it could).
#[test]
fn cpu_progress_wait_sees_every_completion() {
    use braid_runtime::backend::cpu::progress::Progress;
    explore("cpu stream progress: complete vs spin-then-wait", 4, || {
        let p = Arc::new(Progress::new());
        let out = Arc::new(AtomicU64::new(0));
        let (p2, o2) = (p.clone(), out.clone());
        let exec = thread::spawn(move || {
            // Relaxed: the job's output is published by `complete`'s Release.
            o2.store(7, Ordering::Relaxed);
            p2.complete(Ok(()));
            p2.complete(Err(braid_runtime::Error::JobPanicked("job 2".into())));
        });
        let (p3, o3) = (p.clone(), out.clone());
        let waiter = thread::spawn(move || {
            // a wait for the first job only may or may not see job 2's error
            let r1 = p3.wait_until(1, Duration::from_micros(1)).is_err();
            // Relaxed: ordered by the Acquire in `wait_until`/the mutex.
            assert_eq!(o3.load(Ordering::Relaxed), 7, "job output not visible after the wait");
            let first = p3.completed();
            let r = p3.wait_until(2, Duration::from_micros(1));
            assert!(p3.completed() >= first);
            (r1, r.is_err())
        });
        exec.join().unwrap();
        let (r1, r2) = waiter.join().unwrap();
        // The error is reported by exactly one of the two waits (the first
        // takes it if job 2 had finished by then), and not kept after.
        assert!(r1 != r2, "the error was reported {} times", r1 as u8 + r2 as u8);
        assert!(p.wait_until(2, Duration::ZERO).is_ok(), "an error kept after being taken");
        assert_eq!(p.completed(), 2);
    });
}

/// The CPU pool's fork-join region: the caller and a helper claim 3 tasks
/// from one counter; every task runs exactly once, the caller's wait returns
/// only when all have finished and then sees every task's write (the writes
/// are Relaxed: only the region's Release/Acquire orders them), and it never
/// sleeps through the last finish (loom reports a deadlock if it could). The
/// helper may start at any point, also after the caller has returned.
#[test]
fn cpu_region_runs_every_task_once() {
    use braid_runtime::backend::cpu::region::{Region, TaskFn};
    explore("cpu pool region: caller and a helper claim tasks", 3, || {
        let region = Arc::new(Region::new(3));
        let hits = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
        let h = hits.clone();
        // Boxed so it outlives the helper thread (its address is shared raw).
        let f: Box<dyn Fn(usize) + Sync> = Box::new(move |i: usize| {
            // Relaxed: published by the region's Release/Acquire, which is
            // what this model checks.
            h[i].fetch_add(1, Ordering::Relaxed);
        });
        let fp = TaskFn(&*f as *const (dyn Fn(usize) + Sync));
        let r2 = region.clone();
        // SAFETY: `f` lives until the end of this closure, after the join.
        let helper = thread::spawn(move || unsafe { r2.work(fp) });
        // SAFETY: as above.
        unsafe { region.work(fp) };
        assert!(region.wait(Duration::from_micros(1)).is_none());
        for c in hits.iter() {
            // Relaxed: ordered by the wait's Acquire.
            assert_eq!(c.load(Ordering::Relaxed), 1, "a task ran other than once, or its write is not visible after the wait");
        }
        helper.join().unwrap();
        drop(f);
    });
}

/// A timed event wait returns Timeout or success, never hangs.
#[test]
fn event_wait_timeout() {
    explore("event: timed wait vs complete", 4, || {
        let ev = Arc::new(EventState::new());
        let g = ev.record();
        let e2 = ev.clone();
        let t = thread::spawn(move || e2.wait(g, Some(Duration::from_millis(1))).is_ok());
        ev.complete(g);
        let _ = t.join().unwrap();
        assert!(ev.is_complete(g));
    });
}

/// The throttle never lets more than its limit in flight.
#[test]
fn throttle_limit() {
    explore("throttle: 3 threads, limit 1", 3, || {
        let th = Throttle::new(Some(1));
        let inside = Arc::new(AtomicUsize::new(0));
        let ths: Vec<_> = (0..3)
            .map(|_| {
                let (th, inside) = (th.clone(), inside.clone());
                thread::spawn(move || {
                    let p = th.acquire();
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two submissions past a limit of 1");
                    inside.fetch_sub(1, Ordering::SeqCst);
                    drop(p);
                })
            })
            .collect();
        for t in ths {
            t.join().unwrap();
        }
        assert_eq!(th.in_flight(), 0);
    });
}

/// Fake memory for the allocator model: stream 1's progress is an atomic the
/// model's "stream" thread advances.
struct Mem {
    next: AtomicU64,
    s1_enqueued: AtomicU64,
    s1_done: Arc<AtomicU64>,
}

struct Fence1 {
    done: Arc<AtomicU64>,
    target: u64,
}

impl Fence for Fence1 {
    fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst) >= self.target
    }
    fn wait(&self) -> Result<()> {
        self.done.fetch_max(self.target, Ordering::SeqCst);
        Ok(())
    }
}

impl MemorySource for Mem {
    fn name(&self) -> String {
        "loom".into()
    }
    fn alloc(&self, bytes: usize) -> Result<u64> {
        Ok(self.next.fetch_add(bytes as u64, Ordering::SeqCst))
    }
    unsafe fn free(&self, _ptr: u64, _bytes: usize) {}
    fn fence(&self, stream: usize) -> Result<Box<dyn Fence>> {
        if stream == 1 {
            let target = self.s1_enqueued.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(Box::new(Fence1 { done: self.s1_done.clone(), target }))
        } else {
            Ok(Box::new(Fence1 { done: Arc::new(AtomicU64::new(u64::MAX)), target: 0 }))
        }
    }
}

/// Cross-stream reuse: a block of stream 0 also used on stream 1 is never
/// handed out again while stream 1 may still use it; blocks are never handed
/// to two owners at once.
#[test]
fn allocator_cross_stream_reuse() {
    explore("allocator: record_stream reuse, 3 threads", 3, || {
        let s1_done = Arc::new(AtomicU64::new(0));
        let mem = Mem { next: AtomicU64::new(4096), s1_enqueued: AtomicU64::new(0), s1_done: s1_done.clone() };
        let a = CachingAllocator::new(mem, AllocConfig { streams: 2, high_watermark: None }).unwrap();
        let mut b = a.alloc(100, 0).unwrap();
        let p = b.ptr();
        b.record_stream(1).unwrap();
        let a2 = a.clone();
        let freer = thread::spawn(move || drop(b));
        let d = s1_done.clone();
        let stream1 = thread::spawn(move || {
            // stream 1 finishes its work (any fence taken so far)
            d.store(1, Ordering::SeqCst);
        });
        let a3 = a.clone();
        let taker = thread::spawn(move || {
            let got = a3.alloc(100, 0).unwrap();
            if got.ptr() == p {
                assert!(s1_done.load(Ordering::SeqCst) >= 1, "block reused while stream 1 may still use it");
            }
            got.ptr()
        });
        freer.join().unwrap();
        stream1.join().unwrap();
        let q = taker.join().unwrap();
        let again = a2.alloc(100, 0).unwrap();
        // `taker` dropped its block, so both addresses may be free; but the
        // one just handed out is not live anywhere else.
        let _ = (q, again.ptr());
        assert_eq!(a2.stats().allocated, again.size());
    });
}

/// The wgpu backend's completion handshake (`backend::done_flag`): the
/// completion callback (any polling thread) sets the flag after the
/// submission's effects are in place; a stream or event that sees the flag
/// set also sees those effects (a read-back's bytes).
#[test]
fn wgpu_done_flag_publishes_the_work() {
    explore("wgpu: done flag", 3, || {
        let flag = braid_runtime::backend::done_flag::DoneFlag::new();
        let data = Arc::new(AtomicU64::new(0));
        let (f2, d2) = (flag.clone(), data.clone());
        let callback = thread::spawn(move || {
            d2.store(7, Ordering::Relaxed); // the submission's effect
            f2.set();
        });
        let f3 = flag.clone();
        let d3 = data.clone();
        let reader = thread::spawn(move || {
            if f3.is_set() {
                // Relaxed load: visibility comes from the flag's Release/Acquire.
                assert_eq!(d3.load(Ordering::Relaxed), 7, "work not visible after the flag was seen");
            }
        });
        callback.join().unwrap();
        reader.join().unwrap();
        assert!(flag.is_set());
    });
}

//! Stress tests of the stream pool on real CPU streams: many threads, few
//! slots, thread churn, every exhaustion policy and round-robin assignment.
//! Each test ends by checking that every slot is free again. The 64-thread
//! and 10,000-thread-churn tests also run on wgpu streams (`*_wgpu`; a
//! SKIPPED line where there is no adapter).

use braid_runtime::{Assignment, Buffer, Device, DeviceOptions, Error, ExhaustionPolicy, PoolConfig};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

/// CPU streams by default; `BRAID_TEST_DEVICE=cuda` runs the same tests on
/// real CUDA streams (scripts/gpu-check-cuda.sh does).
fn device(size: usize, policy: ExhaustionPolicy, assignment: Assignment) -> Device {
    let options = DeviceOptions { pool: PoolConfig { size, policy, assignment }, ..Default::default() };
    match std::env::var("BRAID_TEST_DEVICE").as_deref() {
        Ok("cuda") => Device::cuda_with(0, options).expect("BRAID_TEST_DEVICE=cuda but no CUDA device"),
        _ => Device::cpu_with(options).unwrap(),
    }
}

/// The same pool on the first wgpu adapter, or `None` (with a SKIPPED line)
/// where there is none.
fn wgpu_device(test: &str, size: usize, policy: ExhaustionPolicy, assignment: Assignment) -> Option<Device> {
    let options = DeviceOptions { pool: PoolConfig { size, policy, assignment }, ..Default::default() };
    match Device::wgpu_with(0, options) {
        Ok(d) => Some(d),
        Err(Error::Unavailable { reason, .. }) => {
            eprintln!("SKIPPED ({test}: no wgpu adapter: {reason})");
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

/// Thread-local destructors run after a scoped thread is joined, so the
/// last slots come back a moment after `scope` returns: wait (bounded) for
/// them, then report how many never came back.
fn free_after_exit(dev: &Device, expect: usize) -> usize {
    for _ in 0..1000 {
        if dev.pool().free_slots() == expect {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    dev.pool().free_slots()
}

fn scale(n: usize) -> usize {
    // BRAID_STRESS_SCALE lets the sanitizer runs (10-50x slower) use fewer cycles.
    let pct: usize = std::env::var("BRAID_STRESS_SCALE_PCT").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    (n * pct / 100).max(1)
}

/// 64 threads on an 8-slot pool (7 worker slots) in wait mode, each doing
/// 1,000 enqueue/sync cycles; at the end every slot is free.
#[test]
fn wait_mode_64_threads_8_slots() {
    wait_mode_64(&device(8, ExhaustionPolicy::WaitForever, Assignment::Exclusive), scale(1000));
}

/// The same on wgpu streams (fewer cycles: each is a queue submission, and
/// CI runs it on a software rasteriser).
#[test]
fn wait_mode_64_threads_8_slots_wgpu() {
    if let Some(dev) = wgpu_device("wait_mode_64_threads_8_slots_wgpu", 8, ExhaustionPolicy::WaitForever, Assignment::Exclusive) {
        wait_mode_64(&dev, scale(50));
    }
}

fn wait_mode_64(dev: &Device, cycles: usize) {
    let max_bound = Arc::new(AtomicUsize::new(0));
    let owners: Arc<Vec<std::sync::atomic::AtomicBool>> = Arc::new((0..8).map(|_| Default::default()).collect());
    std::thread::scope(|s| {
        for t in 0..64u32 {
            let dev = dev.clone();
            let max_bound = max_bound.clone();
            let owners = owners.clone();
            s.spawn(move || {
                let stream = dev.current_stream().unwrap();
                // MutualExclusion: nobody else holds this slot now.
                assert!(!owners[stream.index()].swap(true, Ordering::SeqCst), "slot {} bound to two threads", stream.index());
                max_bound.fetch_max(dev.pool().bound_threads(), Ordering::Relaxed);
                let block = Buffer::alloc(&dev, 256, &stream).unwrap();
                let mut back = [0u8; 256];
                for c in 0..cycles {
                    let v = [(t as usize + c) as u8; 256];
                    stream.write(block.view(), &v).unwrap();
                    stream.synchronize().unwrap();
                    if c % 100 == 0 || c + 1 == cycles {
                        stream.read(block.view(), &mut back).unwrap();
                        assert_eq!(back, v, "thread {t} cycle {c} saw another thread's data");
                    }
                }
                drop(block);
                owners[stream.index()].store(false, Ordering::SeqCst);
                // Give the slot back now so waiters proceed (thread exit would too).
                assert!(dev.pool().release_current());
            });
        }
    });
    assert!(max_bound.load(Ordering::Relaxed) <= 7, "more threads bound than worker slots");
    assert_eq!(free_after_exit(dev, 7), 7, "slots leaked");
    assert_eq!(dev.pool().bound_threads(), 0);
    eprintln!("wait mode ({}): 64 threads x {cycles} cycles on 8-stream pool, max bound {}, slots leaked 0", dev.kind().name(), max_bound.load(Ordering::Relaxed));
}

/// `n` short-lived threads, in batches of 16 at once (so a 7-slot pool is
/// contended), each binding a stream, synchronising it and calling `each`.
fn churn(dev: &Device, n: usize, each: impl Fn(&braid_runtime::Stream) + Sync) {
    for _ in 0..n.div_ceil(16) {
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| {
                    let st = dev.current_stream().unwrap();
                    st.synchronize().unwrap();
                    each(&st);
                });
            }
        });
    }
}

/// 10,000 short-lived threads: the thread-local destructor returns each slot.
#[test]
fn churn_10000_threads_no_leak() {
    churn_10000(&device(8, ExhaustionPolicy::WaitForever, Assignment::Exclusive));
}

#[test]
fn churn_10000_threads_no_leak_wgpu() {
    if let Some(dev) = wgpu_device("churn_10000_threads_no_leak_wgpu", 8, ExhaustionPolicy::WaitForever, Assignment::Exclusive) {
        churn_10000(&dev);
    }
}

fn churn_10000(dev: &Device) {
    let n = scale(10_000);
    let done = AtomicUsize::new(0);
    // No explicit release: thread exit must give each slot back.
    churn(dev, n, |_| {
        done.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(free_after_exit(dev, 7), 7, "slots leaked after churn");
    assert_eq!(dev.pool().bound_threads(), 0);
    eprintln!("churn ({}): {} threads, slots leaked {}", dev.kind().name(), done.load(Ordering::Relaxed), 7 - dev.pool().free_slots());
}

/// The same churn with round-robin assignment: never fails, binds nothing.
#[test]
fn churn_round_robin() {
    let dev = device(8, ExhaustionPolicy::Fail, Assignment::RoundRobin);
    let n = scale(10_000);
    let seen = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    churn(&dev, n, |st| {
        seen.lock().unwrap().insert(st.index());
    });
    let seen = seen.lock().unwrap();
    assert_eq!(*seen, (1..8).collect(), "round robin should spread over every worker stream");
    assert_eq!(dev.pool().free_slots(), 7);
    eprintln!("round-robin churn: {n} threads over streams {seen:?}");
}

/// Fail mode: with 12 threads holding on and 7 slots, exactly 5 get
/// PoolExhausted, and exactly those found no slot.
#[test]
fn fail_mode_exhaustion_exact() {
    let dev = device(8, ExhaustionPolicy::Fail, Assignment::Exclusive);
    let barrier = Barrier::new(12);
    let ok = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..12 {
            s.spawn(|| {
                let r = dev.current_stream();
                match &r {
                    Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(Error::PoolExhausted { size: 8, workers: 7, .. }) => failed.fetch_add(1, Ordering::SeqCst),
                    Err(e) => panic!("unexpected {e}"),
                };
                // hold the slot until everyone has tried
                barrier.wait();
            });
        }
    });
    assert_eq!(ok.load(Ordering::SeqCst), 7);
    assert_eq!(failed.load(Ordering::SeqCst), 5);
    assert_eq!(free_after_exit(&dev, 7), 7);
    let msg = Error::PoolExhausted { size: 8, workers: 7, max: 65, waited: String::new() }.to_string();
    assert!(msg.contains("BRAID_STREAM_POOL_SIZE") && msg.contains("BRAID_STREAM_POOL_WAIT_TIMEOUT_MS"), "{msg}");
}

/// Bounded wait: a waiter times out when nobody releases, and binds when
/// someone does.
#[test]
fn bounded_wait_times_out_then_succeeds() {
    let dev = device(2, ExhaustionPolicy::Wait(Duration::from_millis(50)), Assignment::Exclusive);
    let holder_ready = Barrier::new(2);
    let release = Barrier::new(2);
    std::thread::scope(|s| {
        s.spawn(|| {
            dev.current_stream().unwrap();
            holder_ready.wait();
            release.wait();
            // exits: slot released
        });
        holder_ready.wait();
        let t0 = std::time::Instant::now();
        let e = std::thread::scope(|s2| s2.spawn(|| dev.current_stream().map(|_| ())).join().unwrap());
        assert!(matches!(e, Err(Error::PoolExhausted { .. })), "{e:?}");
        assert!(t0.elapsed() >= Duration::from_millis(50), "gave up before its timeout");
        release.wait();
    });
    // Holder has exited: a new thread binds.
    std::thread::scope(|s| s.spawn(|| dev.current_stream().unwrap()).join().unwrap());
    assert_eq!(free_after_exit(&dev, 1), 1);
}

/// Stream guard nesting restores the previous current stream.
#[test]
fn stream_guard_nests() {
    let dev = device(8, ExhaustionPolicy::Fail, Assignment::Exclusive);
    let own = dev.current_stream().unwrap();
    let s3 = dev.stream(3).unwrap();
    let s5 = dev.stream(5).unwrap();
    {
        let _g = braid_runtime::StreamGuard::new(&s3);
        assert!(dev.current_stream().unwrap().same_as(&s3));
        {
            let _g2 = braid_runtime::StreamGuard::new(&s5);
            assert!(dev.current_stream().unwrap().same_as(&s5));
        }
        assert!(dev.current_stream().unwrap().same_as(&s3));
    }
    assert!(dev.current_stream().unwrap().same_as(&own));
}

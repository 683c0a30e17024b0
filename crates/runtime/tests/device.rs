//! The runtime over real CPU streams: events (record, cross-stream wait,
//! query, timeout, elapsed), the command typestate and throttle, device
//! shutdown while other threads hold streams, a forked child, and bad input.

use braid_runtime::command::CommandBuffer;
use braid_runtime::{Device, DeviceOptions, Error, Event, PoolConfig};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn cpu() -> Device {
    Device::cpu_with(DeviceOptions::default()).unwrap()
}

/// Hold `stream` up until `gate` opens (a slow kernel). SeqCst on the gate:
/// a go/no-go flag only; what the tests assert afterwards is ordered by the
/// stream's own completion (event waits), not by the flag.
fn block_stream(stream: &braid_runtime::Stream, gate: &Arc<AtomicBool>) {
    let g = gate.clone();
    stream
        .raw()
        .host_fns().expect("this backend runs host functions").host_fn(Box::new(move || {
            while !g.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }))
        .unwrap();
}

#[test]
fn event_orders_streams_and_times_out() {
    let dev = cpu();
    let a = dev.stream(1).unwrap();
    let b = dev.stream(2).unwrap();
    let buf = dev.alloc(16, &a).unwrap();
    // Stream a writes, records; stream b waits on the event and reads.
    let ev = Event::new_on(&a, true).unwrap();
    let start = Event::new_on(&a, true).unwrap();
    start.record(&a).unwrap();
    // SAFETY: the block is at least as large as the buffer and outlives the copy (h2d stages its source, d2h waits).
    unsafe { a.raw().h2d(&[9u8; 16], buf.slice()).unwrap() };
    ev.record(&a).unwrap();
    b.wait_event(&ev).unwrap();
    let mut out = [0u8; 16];
    // SAFETY: the block is at least as large as the buffer and outlives the copy (h2d stages its source, d2h waits).
    unsafe { b.raw().d2h(buf.slice(), &mut out).unwrap() };
    assert_eq!(out, [9u8; 16]);
    assert!(ev.query().unwrap());
    ev.synchronize().unwrap();
    assert!(ev.elapsed_ms(&start).unwrap() >= 0.0);
    // elapsed needs timing on both
    let plain = Event::new_on(&a, false).unwrap();
    assert!(matches!(plain.elapsed_ms(&start), Err(Error::InvalidArgument(_))));

    // A stream held up by unfinished work: its event times out, then completes.
    let gate = Arc::new(AtomicBool::new(false));
    let c = dev.stream(3).unwrap();
    block_stream(&c, &gate);
    assert!(matches!(c.synchronize_timeout(Duration::from_millis(10)), Err(Error::Timeout(_))));
    let late = c.record_event().unwrap();
    assert!(!late.query().unwrap());
    assert!(matches!(late.synchronize_timeout(Duration::from_millis(20)), Err(Error::Timeout(_))));
    gate.store(true, Ordering::SeqCst);
    late.synchronize_timeout(Duration::from_secs(30)).unwrap();
    dev.synchronize().unwrap();
}

#[test]
fn command_buffer_keeps_objects_alive_and_runs_handlers() {
    let dev = cpu();
    let kept = Arc::new(5u32);
    let ran = Arc::new(AtomicUsize::new(0));
    let mut cb = CommandBuffer::new(&dev).unwrap();
    let r = ran.clone();
    cb.keep_alive(kept.clone()).encode(|_| Ok(())).on_complete(move |res| {
        assert!(res.is_ok());
        r.fetch_add(1, Ordering::SeqCst);
    });
    let sub = cb.submit().unwrap();
    assert_eq!(Arc::strong_count(&kept), 2, "the submission keeps the object alive");
    sub.wait().unwrap();
    assert_eq!(Arc::strong_count(&kept), 1, "released after completion");
    assert_eq!(ran.load(Ordering::SeqCst), 1);

    // An op that fails: the error reaches wait() and the handlers.
    let mut cb = CommandBuffer::new(&dev).unwrap();
    cb.encode(|_| Err(Error::InvalidArgument("boom".into())));
    assert!(matches!(cb.submit().unwrap().wait(), Err(Error::InvalidArgument(_))));
}

/// Two command buffers in flight on one stream at once (the stream held up
/// so neither has run): each keeps only its own objects alive, each
/// completion handler runs once and sees its own buffer's result (the first
/// buffer's op fails, the second's does not), and the first's objects are
/// released when it is waited for while the second is still pending.
/// Current and previous buffers never share state.
#[test]
fn consecutive_command_buffers_do_not_alias() {
    let dev = cpu();
    let stream = dev.current_stream().unwrap();
    let gate = Arc::new(AtomicBool::new(false));
    block_stream(&stream, &gate);
    let (kept1, kept2) = (Arc::new(1u32), Arc::new(2u32));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    // The gates (SeqCst, as `block_stream`): plain go/no-go flags polled by the
    // stream's work; the assertions that follow synchronise through
    // `wait()`/`query()` (event completion), not through these flags.
    let second_may_run = Arc::new(AtomicBool::new(false));
    let mut cb1 = CommandBuffer::on(&dev, stream.clone());
    let s1 = seen.clone();
    cb1.keep_alive(kept1.clone())
        .encode(|_| Err(Error::InvalidArgument("first buffer fails".into())))
        .on_complete(move |r| s1.lock().unwrap().push((1, r.is_ok())));
    let sub1 = cb1.submit().unwrap();
    let mut cb2 = CommandBuffer::on(&dev, stream.clone());
    let (s2, go) = (seen.clone(), second_may_run.clone());
    cb2.keep_alive(kept2.clone())
        .encode(move |s| {
            // Enqueued work (runs on the stream, not here): held until `go`.
            s.host_fns().expect("this backend runs host functions").host_fn(Box::new(move || {
                while !go.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }))
        })
        .on_complete(move |r| s2.lock().unwrap().push((2, r.is_ok())));
    let sub2 = cb2.submit().unwrap();
    assert_eq!((Arc::strong_count(&kept1), Arc::strong_count(&kept2)), (2, 2), "each submission keeps its own object");
    gate.store(true, Ordering::SeqCst);
    assert!(matches!(sub1.wait(), Err(Error::InvalidArgument(_))));
    assert_eq!(Arc::strong_count(&kept1), 1, "the first buffer's object is released when it is waited for");
    assert!(!sub2.query().unwrap(), "the second is still pending");
    assert_eq!(Arc::strong_count(&kept2), 2, "and still holds its object");
    second_may_run.store(true, Ordering::SeqCst);
    sub2.wait().unwrap();
    assert_eq!(Arc::strong_count(&kept2), 1);
    assert_eq!(*seen.lock().unwrap(), vec![(1, false), (2, true)], "each handler ran once, with its own result");
}

/// The device the event tests run on: CPU streams, or CUDA with
/// `BRAID_TEST_DEVICE=cuda` (scripts/gpu-check-cuda.sh).
fn test_device() -> Device {
    match std::env::var("BRAID_TEST_DEVICE").as_deref() {
        Ok("cuda") => Device::cuda(0).expect("BRAID_TEST_DEVICE=cuda but no CUDA device"),
        _ => cpu(),
    }
}

/// A completion's state outlives the event: every handle of an event is
/// dropped while the work it marks is still queued (the stream held up);
/// when the work runs, the completion has somewhere to land (no crash, no
/// use after free, under TSan too), a clone kept elsewhere still completes,
/// and the stream and a later event behave.
#[test]
fn event_dropped_before_its_work_completes() {
    let dev = test_device();
    let s = dev.stream(1).unwrap();
    let gate = Arc::new(AtomicBool::new(false));
    block_stream(&s, &gate);
    let mut kept = Vec::new();
    for i in 0..100 {
        let e = s.record_event().unwrap();
        if i % 10 == 0 {
            kept.push(e.clone());
        }
        drop(e);
        let unrecorded = Event::new_on(&s, false).unwrap();
        drop(unrecorded);
    }
    assert!(!kept[0].query().unwrap(), "the stream is still held up");
    gate.store(true, Ordering::SeqCst);
    for e in &kept {
        e.synchronize_timeout(Duration::from_secs(30)).unwrap();
    }
    s.synchronize().unwrap();
    let after = s.record_event().unwrap();
    after.synchronize().unwrap();
    eprintln!("event_dropped_before_its_work_completes: {} device, 100 events dropped while pending", dev.label());
}

#[test]
fn throttle_caps_in_flight_submissions() {
    let dev = Device::cpu_with(DeviceOptions { max_inflight: Some(2), ..Default::default() }).unwrap();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..50 {
                    let mut cb = CommandBuffer::new(&dev).unwrap();
                    cb.encode(|_| {
                        std::thread::sleep(Duration::from_micros(100));
                        Ok(())
                    });
                    cb.submit().unwrap().wait().unwrap();
                }
            });
        }
    });
    assert!(dev.throttle().peak() <= 2, "peak {} above the cap", dev.throttle().peak());
    assert_eq!(dev.throttle().in_flight(), 0);
    assert!(dev.throttle().acquire_timeout(Duration::from_millis(1)).is_ok());
}

#[test]
fn shutdown_with_streams_held_elsewhere() {
    let dev = cpu();
    let started = Arc::new(std::sync::Barrier::new(5));
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (dev, started, stop) = (dev.clone(), started.clone(), stop.clone());
            std::thread::spawn(move || {
                let s = dev.current_stream().unwrap();
                let b = dev.alloc(64, &s).unwrap();
                started.wait();
                let mut late_errors = 0;
                while !stop.load(Ordering::SeqCst) {
                    // A held stream stays valid; new device calls are refused.
                    // SAFETY: the block is at least as large as the buffer and outlives the copy (h2d stages its source, d2h waits).
                    unsafe { s.raw().h2d(&[1u8; 64], b.slice()).unwrap() };
                    s.synchronize().unwrap();
                    if let Err(Error::DeviceShutDown(_)) = dev.alloc(64, &s) {
                        late_errors += 1;
                    }
                }
                late_errors
            })
        })
        .collect();
    started.wait();
    dev.shutdown().unwrap();
    assert!(matches!(dev.current_stream(), Err(Error::DeviceShutDown(_))));
    std::thread::sleep(Duration::from_millis(20));
    stop.store(true, Ordering::SeqCst);
    drop(dev); // the last handle outside the workers
    for h in handles {
        assert!(h.join().unwrap() > 0, "late callers get a clear error");
    }
}

#[test]
fn dropping_device_with_work_in_flight() {
    for _ in 0..20 {
        let dev = cpu();
        let s = dev.current_stream().unwrap();
        let b = dev.alloc(1 << 16, &s).unwrap();
        for _ in 0..10 {
            // SAFETY: the block is at least as large as the buffer and outlives the copy (h2d stages its source, d2h waits).
            unsafe { s.raw().h2d(&vec![3u8; 1 << 16], b.slice()).unwrap() };
        }
        // Drop the device first, then the block and the stream, work still queued.
        drop(dev);
        drop(b);
        drop(s);
    }
}

#[test]
fn bad_settings_are_errors_not_panics() {
    let bad = DeviceOptions { pool: PoolConfig { size: 0, ..Default::default() }, ..Default::default() };
    assert!(matches!(Device::cpu_with(bad), Err(Error::Config { .. })));
    assert!(matches!(Device::parse("tpu"), Err(Error::InvalidArgument(_))));
    let dev = cpu();
    assert!(matches!(dev.stream(999), Err(Error::InvalidArgument(_))));
    let other = cpu();
    let s = other.current_stream().unwrap();
    assert!(matches!(dev.alloc(8, &s), Err(Error::DeviceMismatch(_))));
    let ev = other.new_event(false).unwrap();
    let mine = dev.current_stream().unwrap();
    assert!(matches!(mine.wait_event(&ev), Err(Error::DeviceMismatch(_))));
}

#[cfg(unix)]
#[test]
fn forked_child_gets_a_clear_error() {
    let dev = cpu();
    dev.current_stream().unwrap();
    // SAFETY: the child only calls async-signal-safe code paths up to the
    // check (an atomic load) and then `_exit`s without unwinding.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = match dev.current_stream() {
            Err(Error::ForkedChild) => 0,
            _ => 1,
        };
        // SAFETY: _exit in the forked child ends it without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: pid is our child and status a valid out-pointer.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child did not see ForkedChild");
    assert!(dev.current_stream().is_ok(), "the parent is unaffected");
}

#[test]
fn graph_capture_unsupported_on_cpu_is_an_error_and_stream_stays_usable() {
    let dev = cpu();
    let s = dev.current_stream().unwrap();
    let cache = braid_runtime::graph::GraphCache::new();
    let r = cache.get_or_capture(1, &[1, 512], &s, || Ok(()));
    assert!(matches!(r, Err(Error::Unsupported { .. })), "{:?}", r.err());
    assert!(cache.is_empty());
    let b = dev.alloc(8, &s).unwrap();
    // SAFETY: the block is at least as large as the buffer and outlives the copy (h2d stages its source, d2h waits).
    unsafe { s.raw().h2d(&[1u8; 8], b.slice()).unwrap() };
    s.synchronize().unwrap();
}

/// Process exit while worker threads still have work in flight on their
/// streams: the process exits cleanly (status 0), no crash, no hang. The
/// test re-runs its own binary as the child.
#[test]
fn process_exit_with_threads_alive() {
    if std::env::var_os("BRAID_EXIT_CHILD").is_some() {
        let dev = cpu();
        for _ in 0..8 {
            let dev = dev.clone();
            std::thread::spawn(move || {
                let s = dev.current_stream().unwrap();
                let b = dev.alloc(1 << 16, &s).unwrap();
                loop {
                    // SAFETY: the block is at least as large as the buffer and outlives the copy (h2d stages its source, d2h waits).
                    unsafe { s.raw().h2d(&vec![5u8; 1 << 16], b.slice()).unwrap() };
                }
            });
        }
        std::thread::sleep(Duration::from_millis(50));
        std::process::exit(0);
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["--exact", "process_exit_with_threads_alive", "--nocapture", "--test-threads", "1"])
        .env("BRAID_EXIT_CHILD", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "child exited with {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
}

#[test]
fn serialized_paths_run_one_at_a_time_and_are_counted() {
    let inside = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..100 {
                    braid_runtime::serialized("test: not reentrant", || {
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two threads inside a serialized path");
                        std::hint::spin_loop();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            });
        }
    });
    let stats = braid_runtime::serialized_stats();
    assert!(stats.iter().any(|&(n, c)| n == "test: not reentrant" && c == 800), "{stats:?}");
}

//! `braid bench story`: the complete story on one device and workload:
//! correctness, thread scaling (per-thread streams, one shared stream, graph
//! replay), batching, sync pattern, pipeline depth and dynamic batching.
//! Owns the measurement method: warm-up before timing, the median of repeated
//! runs, a progress line per section on stderr, tables on stdout, the JSON
//! report. The workloads plug in through [`Bench`].

use crate::report::{Report, Row};
use braid_runtime::{Device, Event, Result, Stream, StreamGuard};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// A workload as the story drives it.
pub trait Bench: Send + Sync {
    type Input: Send + Sync;
    type Output: Send + Sync + 'static;
    fn name(&self) -> &'static str;
    /// Batch sizes of the batching table.
    fn batches(&self) -> Vec<usize>;
    /// An input of `batch` samples, made on the calling thread's current stream.
    fn input(&self, batch: usize, seed: u64) -> Result<Self::Input>;
    /// Enqueue one forward on the calling thread's current stream; the
    /// returned output keeps its memory alive until dropped (do not read it).
    fn forward(&self, x: &Self::Input) -> Result<Self::Output>;
    /// Correctness rows: (name, relative error vs a CPU f64 reference).
    fn correctness(&self) -> Result<Vec<(String, f64)>>;
    /// Dynamic-batching rows for these client counts, over `all` (one bench
    /// per device, the first being the one the other sections use). With
    /// `replicated`, one batcher feeds a replica per device
    /// (`braid_batch::Replicas`, as `serve --device cuda:all` does), even
    /// for a single device; otherwise `all` has one bench and the batcher
    /// feeds it directly.
    fn dynamic(all: &[Self], replicated: bool, clients: &[usize], seconds: f64) -> Result<Vec<Row>>
    where
        Self: Sized;
    /// Whether graph capture of a forward works on this device and workload.
    fn graphs(&self) -> bool;
}

pub struct Settings {
    pub seconds: f64,
    pub repeats: usize,
    pub threads: Vec<usize>,
    pub depths: Vec<usize>,
    pub clients: Vec<usize>,
    /// The sections to run (all of [`SECTIONS`] by default).
    pub sections: Vec<&'static str>,
    /// Batch sizes for the batching table; `None`: the workload's own.
    pub batches: Option<Vec<usize>>,
}

/// The story's sections, in the order they run.
pub const SECTIONS: [&str; 6] = ["correctness", "threads", "batching", "sync", "pipeline", "dynamic"];

impl Settings {
    pub fn new(quick: bool) -> Settings {
        Settings {
            seconds: if quick { 0.15 } else { 1.0 },
            repeats: if quick { 1 } else { 3 },
            threads: vec![1, 2, 4, 8, 16],
            depths: vec![1, 2, 4, 8, 16, 32],
            clients: vec![1, 4, 16, 64, 256],
            sections: SECTIONS.to_vec(),
            batches: None,
        }
    }

    /// Keep only the comma-separated `list` of sections; an unknown name is
    /// an error naming the known ones.
    pub fn only(&mut self, list: &str) -> Result<()> {
        let mut keep = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match SECTIONS.iter().find(|s| **s == name) {
                Some(s) => keep.push(*s),
                None => return Err(braid_runtime::Error::InvalidArgument(format!("unknown story section {name:?}: expected some of {}", SECTIONS.join(",")))),
            }
        }
        if keep.is_empty() {
            return Err(braid_runtime::Error::InvalidArgument("--sections names no section".into()));
        }
        self.sections = keep;
        Ok(())
    }

    fn runs(&self, section: &str) -> bool {
        self.sections.contains(&section)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Run `threads` threads, each building its loop body with `setup` (warm-up
/// happens inside setup), then calling it until the time is up; returns
/// completed operations per second over all threads. `setup` returns the
/// per-call body, which returns how many operations it completed.
fn run_threads<S, F>(threads: usize, seconds: f64, setup: S) -> Result<f64>
where
    S: Fn(usize) -> Result<F> + Sync,
    F: FnMut() -> Result<u64>,
{
    let start = Barrier::new(threads + 1);
    let stop = AtomicBool::new(false);
    let total = AtomicU64::new(0);
    let mut first_err = Ok(());
    let elapsed = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (start, stop, total, setup) = (&start, &stop, &total, &setup);
                s.spawn(move || -> Result<()> {
                    let body = setup(t);
                    start.wait();
                    let mut body = body?;
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += body()?;
                    }
                    total.fetch_add(n, Ordering::Relaxed);
                    Ok(())
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            let r = h.join().unwrap_or_else(|p| Err(braid_runtime::Error::JobPanicked(braid_runtime::panic_message(&p))));
            if first_err.is_ok() {
                first_err = r;
            }
        }
        t0.elapsed()
    });
    first_err?;
    Ok(total.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64())
}

fn repeated(repeats: usize, mut f: impl FnMut() -> Result<f64>) -> Result<f64> {
    let mut v = Vec::new();
    for _ in 0..repeats {
        v.push(f()?);
    }
    Ok(median(v))
}

/// One forward, waited for by an event on the calling thread's stream.
fn forward_wait<B: Bench>(b: &B, stream: &Stream, x: &B::Input) -> Result<()> {
    let out = b.forward(x)?;
    stream.record_event()?.synchronize()?;
    drop(out);
    Ok(())
}

/// The story of `benches[0]` on `devices[0]`; the dynamic rows run over
/// every device (see [`Bench::dynamic`]).
pub fn run<B: Bench>(devices: &[Device], benches: &[B], replicated: bool, s: &Settings) -> Result<Report> {
    let (device, bench) = (&devices[0], &benches[0]);
    let mut rows = Vec::new();
    let n_sections = 6;
    let progress = |i: usize, what: &str| eprintln!("[{i}/{n_sections}] {what} ({} on {})", bench.name(), device.name());

    if s.runs("correctness") {
        progress(1, "correctness vs CPU f64 reference");
        println!("\n## correctness\n\n| check | rel err |\n| --- | ---: |");
        for (name, err) in bench.correctness()? {
            println!("| {name} | {err:.2e} |");
            rows.push(Row::Correctness { name, max_rel_err: err });
        }
    }

    if s.runs("threads") {
        progress(2, "thread scaling (batch 1)");
        println!("\n## threads (batch 1, ops/s)\n\n| threads | per-thread-stream | shared-stream | graph |\n| ---: | ---: | ---: | ---: |");
        let shared = device.stream(1)?;
        for &t in &s.threads {
            let mut line = format!("| {t} ");
            for mode in ["per-thread-stream", "shared-stream", "graph"] {
                if mode == "graph" && !bench.graphs() {
                    line += "| - ";
                    continue;
                }
                let ops = repeated(s.repeats, || {
                    run_threads(t, s.seconds, |tid| {
                        let guard = if mode == "shared-stream" { Some(StreamGuard::new(&shared)) } else { None };
                        let stream = device.current_stream()?;
                        let x = bench.input(1, tid as u64)?;
                        forward_wait(bench, &stream, &x)?; // warm-up
                        // The runtime's capture (graph.rs): the output stays
                        // alive in the graph's state as long as the graph.
                        let graph = if mode == "graph" { Some(braid_runtime::graph::capture(&stream, || bench.forward(&x))?) } else { None };
                        let ev = Event::new_on(&stream, false)?;
                        Ok(move || -> Result<u64> {
                            let _keep = &guard;
                            match &graph {
                                Some(g) => g.launch()?,
                                None => drop(bench.forward(&x)?),
                            }
                            ev.record(&stream)?;
                            ev.synchronize()?;
                            Ok(1)
                        })
                    })
                })?;
                line += &format!("| {ops:.0} ");
                rows.push(Row::Threads { threads: t, mode: mode.into(), ops_per_s: ops });
            }
            println!("{line}|");
        }
    }

    if s.runs("batching") {
        progress(3, "batching (1 thread)");
        println!("\n## batching (1 thread)\n\n| batch | latency ms | samples/s |\n| ---: | ---: | ---: |");
        for b in s.batches.clone().unwrap_or_else(|| bench.batches()) {
            let per_s = repeated(s.repeats, || {
                run_threads(1, s.seconds, |_| {
                    let stream = device.current_stream()?;
                    let x = bench.input(b, 7)?;
                    forward_wait(bench, &stream, &x)?;
                    Ok(move || forward_wait(bench, &stream, &x).map(|_| 1))
                })
            })?;
            println!("| {b} | {:.3} | {:.0} |", 1e3 / per_s, per_s * b as f64);
            rows.push(Row::Batching { batch: b, latency_ms: 1e3 / per_s, samples_per_s: per_s * b as f64 });
        }
    }

    if s.runs("sync") {
        progress(4, "sync pattern (device-wide sync after every op vs one event at the end of 10)");
        println!("\n## sync pattern (batch 1, ops/s)\n\n| threads | every-op | at-end |\n| ---: | ---: | ---: |");
        for t in [1usize, 8] {
            let mut line = format!("| {t} ");
            for pattern in ["every-op", "at-end"] {
                let ops = repeated(s.repeats, || {
                    run_threads(t, s.seconds, |tid| {
                        let stream = device.current_stream()?;
                        let x = bench.input(1, tid as u64)?;
                        forward_wait(bench, &stream, &x)?;
                        Ok(move || -> Result<u64> {
                            let mut outs = Vec::with_capacity(10);
                            for _ in 0..10 {
                                outs.push(bench.forward(&x)?);
                                if pattern == "every-op" {
                                    device.synchronize()?;
                                }
                            }
                            if pattern == "at-end" {
                                stream.record_event()?.synchronize()?;
                            }
                            Ok(10)
                        })
                    })
                })?;
                line += &format!("| {ops:.0} ");
                rows.push(Row::Sync { pattern: pattern.into(), threads: t, ops_per_s: ops });
            }
            println!("{line}|");
        }
    }

    if s.runs("pipeline") {
        progress(5, "pipeline depth (1 thread, events, no device-wide sync)");
        println!("\n## pipeline depth (1 thread, batch 1)\n\n| depth | ops/s |\n| ---: | ---: |");
        for &depth in &s.depths {
            let ops = repeated(s.repeats, || {
                run_threads(1, s.seconds, |_| {
                    let stream = device.current_stream()?;
                    let x = bench.input(1, 3)?;
                    forward_wait(bench, &stream, &x)?;
                    let mut inflight: std::collections::VecDeque<(Event, B::Output)> = Default::default();
                    Ok(move || -> Result<u64> {
                        // Count an op when it has completed (its event), not when
                        // it was enqueued.
                        let out = bench.forward(&x)?;
                        inflight.push_back((stream.record_event()?, out));
                        if inflight.len() >= depth {
                            if let Some((ev, out)) = inflight.pop_front() {
                                ev.synchronize()?;
                                drop(out);
                                return Ok(1);
                            }
                        }
                        Ok(0)
                    })
                })
            })?;
            // Anything still in flight when the loop stopped is drained by the
            // threads' stream being synchronised at the next section.
            device.synchronize()?;
            println!("| {depth} | {ops:.0} |");
            rows.push(Row::Pipeline { depth, ops_per_s: ops });
        }
    }

    if s.runs("dynamic") {
        if replicated {
            progress(6, &format!("dynamic batching (clients send single samples) over {} device(s): {}", devices.len(), devices.iter().map(|d| d.label().to_string()).collect::<Vec<_>>().join(", ")));
        } else {
            progress(6, "dynamic batching (clients send single samples)");
        }
        println!("\n## dynamic batching\n\n| clients | req/s | p50 ms | p99 ms | mean batch |\n| ---: | ---: | ---: | ---: | ---: |");
        for r in B::dynamic(benches, replicated, &s.clients, s.seconds.max(0.3) * 2.0)? {
            if let Row::Dynamic { clients, requests_per_s, p50_ms, p99_ms, mean_batch } = &r {
                println!("| {clients} | {requests_per_s:.0} | {p50_ms:.3} | {p99_ms:.3} | {mean_batch:.1} |");
            }
            rows.push(r);
        }
    }

    Ok(Report {
        tool: "braid".into(),
        device: device.name(),
        backend: device.kind().name().into(),
        workload: bench.name().into(),
        date: Some(today()),
        quick: s.seconds < 0.5,
        dynamic_devices: replicated.then(|| devices.iter().map(|d| d.label().to_string()).collect()),
        results: rows,
    })
}

/// Today's date (UTC) as YYYY-MM-DD, from the system clock.
pub fn today() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let days = secs.div_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02}")
}

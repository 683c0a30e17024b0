//! `braid soak --minutes N [--device D] [--threads T]`: mixed workloads
//! (`mlp` at batch 1-8, `encoder` at batch 1-2, MiniLM if the model is
//! installed) from T threads with thread churn (each worker exits after a
//! random number of forwards and is replaced), every result checked bitwise
//! against the serial result for its input. Reports operations, errors,
//! threads started, host RSS growth per hour and device-memory growth.

use braid_nn::{workloads as wl, Mlp, Rng, SentenceEmbedder, TransformerEncoderLayer};
use braid_runtime::{Device, Error, Result};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Serialize, Debug)]
pub struct SoakReport {
    pub device: String,
    /// Every device soaked (labels), summed in the memory figures.
    pub devices: Vec<String>,
    pub backend: String,
    pub date: String,
    pub minutes: f64,
    pub threads: usize,
    pub workloads: Vec<String>,
    pub operations: u64,
    pub errors: u64,
    pub mismatches: u64,
    pub threads_started: u64,
    pub rss_mb_after_warmup: f64,
    pub rss_mb_end: f64,
    pub rss_growth_mb_per_hour: f64,
    pub device_reserved_mb_after_warmup: f64,
    pub device_reserved_mb_end: f64,
    pub device_used_mb_after_warmup: Option<f64>,
    pub device_used_mb_end: Option<f64>,
    pub first_error: Option<String>,
}

/// Resident set size of this process in MiB (Linux; 0 elsewhere).
fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<f64>().ok()))
        .map(|pages| pages * 4096.0 / (1 << 20) as f64)
        .unwrap_or(0.0)
}

fn device_used_mb(d: &Device) -> Option<f64> {
    d.backend().memory_info().map(|(free, total)| (total - free) as f64 / (1 << 20) as f64)
}

struct Models {
    mlp: Mlp,
    enc: TransformerEncoderLayer,
    minilm: Option<SentenceEmbedder>,
    /// (workload, batch, seed) -> serial output.
    expected: Vec<(u8, usize, u64, Vec<f32>)>,
    texts: Vec<String>,
}

impl Models {
    fn run(&self, device: &Device, case: usize) -> Result<Vec<f32>> {
        let (w, batch, seed, _) = &self.expected[case];
        match w {
            0 => self.mlp.forward(&wl::mlp_input_tensor(device, *batch, *seed)?)?.to_vec(),
            1 => self.enc.forward(&wl::encoder_input_tensor(device, *batch, *seed)?, None)?.to_vec(),
            _ => {
                let m = self.minilm.as_ref().ok_or_else(|| Error::InvalidArgument("no model".into()))?;
                let i = *seed as usize % self.texts.len();
                let texts: Vec<&str> = self.texts[i..(i + batch).min(self.texts.len())].iter().map(|s| s.as_str()).collect();
                Ok(m.embed(&texts)?.concat())
            }
        }
    }
}

/// Each device's models and the serial results on that device.
fn prepare(device: &Device, model_dir: &str) -> Result<Models> {
    let minilm = match SentenceEmbedder::load(model_dir, device) {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!("soak: MiniLM not used ({e})");
            None
        }
    };
    let mut models = Models { mlp: wl::mlp(device)?, enc: wl::encoder(device)?, minilm, expected: Vec::new(), texts: crate::workloads::sample_texts() };
    // The serial results every parallel result must equal.
    let mut cases = Vec::new();
    for (b, s) in [(1usize, 1u64), (3, 2), (8, 3)] {
        cases.push((0u8, b, s));
    }
    for (b, s) in [(1usize, 4u64), (2, 5)] {
        cases.push((1u8, b, s));
    }
    if models.minilm.is_some() {
        for (b, s) in [(1usize, 6u64), (4, 7)] {
            cases.push((2u8, b, s));
        }
    }
    for (w, b, s) in cases {
        models.expected.push((w, b, s, Vec::new()));
        let i = models.expected.len() - 1;
        let out = models.run(device, i)?;
        models.expected[i].3 = out;
    }
    Ok(models)
}

/// Sum of a per-device figure over the devices (None if any lacks it).
fn total(devices: &[Device], f: impl Fn(&Device) -> Option<f64>) -> Option<f64> {
    devices.iter().map(f).sum()
}

/// Soak `devices` (several with `--device cpu:0,1` or `cuda:all`: each
/// gets its own models, and threads are spread over them in turn).
pub fn run(devices: &[Device], minutes: f64, threads: usize, model_dir: &str, json: Option<&str>) -> Result<std::process::ExitCode> {
    // At most a year: beyond that `Instant + Duration` could overflow.
    if !(minutes > 0.0 && minutes <= 525_600.0) || threads == 0 {
        return Err(Error::InvalidArgument(format!("soak needs 0 < --minutes ≤ 525600 (a year) and --threads ≥ 1 (got {minutes:?} minutes, {threads} threads)")));
    }
    let device = &devices[0];
    let per_device: Vec<Arc<Models>> = devices.iter().map(|d| prepare(d, model_dir).map(Arc::new)).collect::<Result<_>>()?;
    let models = &per_device[0];
    let mut names = vec!["mlp".to_string(), "encoder".to_string()];
    if models.minilm.is_some() {
        names.push("minilm".into());
    }
    let ops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mismatches = Arc::new(AtomicU64::new(0));
    let started = Arc::new(AtomicU64::new(0));
    let first_error: Arc<std::sync::Mutex<Option<String>>> = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(minutes * 60.0);
    let warmup = Duration::from_secs_f64((minutes * 60.0 * 0.1).clamp(1.0, 30.0));
    let mut baseline: Option<(f64, f64, Option<f64>)> = None;
    let mut live: Vec<std::thread::JoinHandle<()>> = Vec::new();
    let mut seed = Rng::new(crate::fresh_seed());
    let mut last_report = Instant::now();
    let reserved_mb = || devices.iter().map(|d| d.memory_stats().reserved as f64).sum::<f64>() / (1 << 20) as f64;
    let labels: Vec<String> = devices.iter().map(|d| d.label().to_string()).collect();
    eprintln!("soak: {minutes} min on {} ({}) with {threads} threads, workloads {names:?}", device.name(), labels.join(", "));
    while Instant::now() < end {
        live.retain(|h| !h.is_finished());
        while live.len() < threads {
            // Threads take the devices in turn.
            let k = started.load(Ordering::Relaxed) as usize % devices.len();
            let (device, models, ops, errors, mismatches, first_error, stop) = (devices[k].clone(), per_device[k].clone(), ops.clone(), errors.clone(), mismatches.clone(), first_error.clone(), stop.clone());
            let lifetime = 20 + seed.below(400);
            let mut rng = Rng::new(seed.next_u64());
            started.fetch_add(1, Ordering::Relaxed);
            live.push(std::thread::spawn(move || {
                for _ in 0..lifetime {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let case = rng.below(models.expected.len() as u64) as usize;
                    match models.run(&device, case) {
                        Ok(out) => {
                            if out.iter().map(|v| v.to_bits()).ne(models.expected[case].3.iter().map(|v| v.to_bits())) {
                                mismatches.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e.to_string());
                        }
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(20));
        if baseline.is_none() && t0.elapsed() >= warmup {
            baseline = Some((rss_mb(), reserved_mb(), total(devices, device_used_mb)));
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            eprintln!(
                "soak: {:>5.0} s  ops {:>9}  errors {}  mismatches {}  threads started {}  rss {:.1} MiB  device reserved {:.1} MiB{}",
                t0.elapsed().as_secs_f64(),
                ops.load(Ordering::Relaxed),
                errors.load(Ordering::Relaxed),
                mismatches.load(Ordering::Relaxed),
                started.load(Ordering::Relaxed),
                rss_mb(),
                reserved_mb(),
                total(devices, device_used_mb).map(|m| format!("  device used {m:.0} MiB")).unwrap_or_default()
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in live {
        let _ = h.join();
    }
    let elapsed_h = t0.elapsed().as_secs_f64() / 3600.0;
    let (rss0, res0, used0) = baseline.unwrap_or((rss_mb(), 0.0, None));
    let rss1 = rss_mb();
    let hours_after_warmup = (elapsed_h - warmup.as_secs_f64() / 3600.0).max(1e-9);
    let report = SoakReport {
        device: device.name(),
        devices: labels.clone(),
        backend: device.kind().name().into(),
        date: crate::story::today(),
        minutes,
        threads,
        workloads: names,
        operations: ops.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        mismatches: mismatches.load(Ordering::Relaxed),
        threads_started: started.load(Ordering::Relaxed),
        rss_mb_after_warmup: rss0,
        rss_mb_end: rss1,
        rss_growth_mb_per_hour: (rss1 - rss0) / hours_after_warmup,
        device_reserved_mb_after_warmup: res0,
        device_reserved_mb_end: reserved_mb(),
        device_used_mb_after_warmup: used0,
        device_used_mb_end: total(devices, device_used_mb),
        first_error: first_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    };
    let text = serde_json::to_string_pretty(&report).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    println!("{text}");
    if let Some(path) = json {
        std::fs::write(path, &text).map_err(|e| Error::Io { path: path.into(), message: e.to_string() })?;
    }
    Ok(if report.errors == 0 && report.mismatches == 0 { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE })
}


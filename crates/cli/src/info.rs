//! `braid info`: which backends were found (and why not), the device
//! `Device::auto()` picks, and the stream pool and throttle settings in force;
//! with `--model DIR`, the model family, pooling and modules braid reads
//! from that directory and every default it used (loaded on the CPU).

use braid_runtime::config::MAX_POOL_SIZE;
use braid_runtime::{Assignment, Device, DeviceOptions, ExhaustionPolicy, Result};
use std::process::ExitCode;

pub fn run(model: Option<&str>) -> Result<ExitCode> {
    println!("braid {}", env!("CARGO_PKG_VERSION"));
    // Settings first: a bad variable is reported as such, before anything else.
    let options = DeviceOptions::from_env()?;
    println!("backends:");
    let cpu = Device::cpu_with(options.clone())?;
    println!("  cpu   available    {}", cpu.name());
    match Device::cuda_with(0, options.clone()) {
        Ok(d) => {
            let mem = d.backend().memory_info().map(|(free, total)| format!(", {:.1} GiB free of {:.1} GiB", free as f64 / (1u64 << 30) as f64, total as f64 / (1u64 << 30) as f64)).unwrap_or_default();
            println!("  cuda  available    {}{mem}", d.name());
        }
        Err(e) => println!("  cuda  {e}"),
    }
    wgpu_lines();
    let auto = Device::auto()?;
    println!("default device (Device::auto): {} ({})", auto.kind().name(), auto.name());
    let p = options.pool;
    let policy = match p.policy {
        ExhaustionPolicy::Fail => "fail at once (BRAID_STREAM_POOL_WAIT_TIMEOUT_MS=0)".to_string(),
        ExhaustionPolicy::Wait(d) => format!("wait up to {} ms", d.as_millis()),
        ExhaustionPolicy::WaitForever => "wait forever (-1)".to_string(),
    };
    let assignment = match p.assignment {
        Assignment::Exclusive => "exclusive (one worker stream per thread)",
        Assignment::RoundRobin => "round-robin (streams may be shared)",
    };
    println!("stream pool: {} streams per device (1 default + {} worker slots; BRAID_STREAM_POOL_SIZE, 2..={MAX_POOL_SIZE}), created lazily", p.size, p.workers());
    println!("  when exhausted: {policy}");
    println!("  assignment: {assignment} (BRAID_STREAM_POOL_ASSIGNMENT)");
    let caps = auto.capabilities();
    println!(
        "  can: graph capture {}, host functions {}, timing events {}, packed (varlen) attention {}, dtypes {}",
        yes(caps.graph_capture),
        yes(caps.host_functions),
        yes(caps.timing),
        yes(caps.varlen_attention),
        caps.dtypes.iter().map(|d| d.name()).collect::<Vec<_>>().join(", ")
    );
    match options.max_inflight {
        None => println!("throttle: unlimited model forwards in flight (BRAID_MAX_INFLIGHT unset or 0)"),
        Some(n) => println!("throttle: at most {n} model forwards in flight per device (BRAID_MAX_INFLIGHT: held around each batched forward of braid serve's models and each CommandBuffer submission)"),
    }
    if let Some(dir) = model {
        let config = braid_nn::ModelConfig::read(std::path::Path::new(dir))?;
        if config.architecture().is_some_and(|a| a.ends_with("ForSequenceClassification")) {
            let m = braid_nn::CrossEncoder::load(dir, &cpu)?;
            println!("model {dir}: {} classifier, {} labels {:?}, max_seq_length {}", m.encoder().model_type(), m.num_labels(), m.labels(), m.max_seq_length());
        } else {
            let m = braid_nn::SentenceEmbedder::load(dir, &cpu)?;
            println!("model {dir}: {}; embedding width {}", m.describe(), m.dim());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The wgpu adapters (`--device wgpu:N`), with their graphics backend.
#[cfg(feature = "wgpu")]
fn wgpu_lines() {
    let all = braid_runtime::backend::wgpu::list_adapters();
    if all.is_empty() {
        println!("  wgpu  unavailable: no adapter (no Vulkan, Metal or DX12 driver; Debian: apt-get install mesa-vulkan-drivers)");
    }
    for a in all {
        println!("  wgpu:{}  available  {} [{}; {}; {}]", a.index, a.name, a.backend, a.device_type, a.driver);
    }
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_lines() {
    println!("  wgpu  not built (build with the `wgpu` feature)");
}

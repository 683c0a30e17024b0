//! `braid serve`: binds the address first (a port in use is reported before
//! the model loads), checks every numeric option against its bounds, loads
//! the model, starts braid-serve's HTTP server and runs until SIGINT or
//! SIGTERM; then finishes the requests in flight and drains the batcher,
//! within `--shutdown-timeout`. A second signal exits at once. Owns the
//! translation from command-line options to `ServeConfig`, their bounds,
//! the device's cache budget, signals, and the runtime set-up.

use braid_batch::BatcherConfig;
use braid_nn::SentenceEmbedder;
use braid_runtime::{Device, DeviceOptions, Error, Result};
use braid_serve::{AppState, ConnConfig, ServeConfig};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

pub struct Options {
    pub model: String,
    pub device: String,
    pub host: String,
    pub port: u16,
    pub max_batch: usize,
    pub max_delay_ms: f64,
    pub workers: usize,
    pub capacity: usize,
    pub max_inputs: usize,
    pub deadline_ms: u64,
    pub header_read_timeout: f64,
    pub keep_alive_timeout: f64,
    pub shutdown_timeout: f64,
    pub max_connections: Option<usize>,
    pub max_cache_bytes: String,
    pub tokenize_concurrency: Option<usize>,
}

/// Largest `--max-batch`: far above any useful batch for the models braid
/// serves, far below an allocation that could hurt.
pub const MAX_BATCH: usize = 4096;
/// Largest `--capacity` (texts waiting).
pub const MAX_CAPACITY: usize = 1_000_000;
/// Largest `--max-inputs`.
pub const MAX_INPUTS: usize = 65_536;
/// Largest `--max-delay-ms`.
pub const MAX_DELAY_MS: f64 = 60_000.0;
/// Largest `--deadline-ms` (one hour).
pub const MAX_DEADLINE_MS: u64 = 3_600_000;
/// Longest timeout of the `--*-timeout` options (seconds).
pub const MAX_TIMEOUT_S: f64 = 3600.0;
/// Largest `--tokenize-concurrency`.
pub const MAX_TOKENIZE: usize = 256;

fn bad(flag: &str, got: impl std::fmt::Display, want: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("{flag} {got} is out of range: expected {want}"))
}

fn seconds(flag: &str, v: f64) -> Result<Duration> {
    if !(v.is_finite() && v >= 0.001 && v <= MAX_TIMEOUT_S) {
        return Err(bad(flag, v, format!("seconds in 0.001..={MAX_TIMEOUT_S}")));
    }
    Ok(Duration::from_secs_f64(v))
}

/// The cache budget `auto` stands for: 256 MiB on the CPU (where the
/// cache is host memory and malloc is cheap), 2 GiB on a GPU.
pub fn auto_cache_bytes(device: &str) -> usize {
    if device.trim() == "cpu" {
        256 << 20
    } else {
        2 << 30
    }
}

/// `--max-cache-bytes`: `auto`, `unlimited`, or a whole number of bytes,
/// optionally with a K, M, G or T suffix (powers of 1024; `KiB` etc. also
/// accepted).
pub fn parse_bytes(s: &str, device: &str) -> Result<Option<usize>> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    if t.eq_ignore_ascii_case("auto") {
        return Ok(Some(auto_cache_bytes(device)));
    }
    let err = || Error::InvalidArgument(format!("--max-cache-bytes {s:?}: expected a number of bytes with an optional K, M, G or T suffix (e.g. 2G), `auto` or `unlimited`"));
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let n: u64 = n.parse().map_err(|_| err())?;
    let shift = match unit.trim().to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(err()),
    };
    let bytes = n.checked_mul(1u64 << shift).and_then(|b| usize::try_from(b).ok()).ok_or_else(err)?;
    if bytes < 1 << 20 {
        return Err(bad("--max-cache-bytes", s, "at least 1M (or `unlimited`)"));
    }
    Ok(Some(bytes))
}

/// Every option checked against its bounds, before anything is loaded.
pub fn config(o: &Options) -> Result<(ServeConfig, Option<usize>)> {
    if !(1..=MAX_BATCH).contains(&o.max_batch) {
        return Err(bad("--max-batch", o.max_batch, format!("1..={MAX_BATCH}")));
    }
    if !(1..=MAX_CAPACITY).contains(&o.capacity) {
        return Err(bad("--capacity", o.capacity, format!("1..={MAX_CAPACITY}")));
    }
    if !(1..=MAX_INPUTS).contains(&o.max_inputs) {
        return Err(bad("--max-inputs", o.max_inputs, format!("1..={MAX_INPUTS}")));
    }
    if o.max_inputs > o.capacity {
        return Err(bad("--max-inputs", o.max_inputs, format!("at most --capacity ({}): a larger request could never be queued", o.capacity)));
    }
    let max_workers = braid_runtime::config::MAX_POOL_SIZE - 1;
    if !(1..=max_workers).contains(&o.workers) {
        return Err(bad("--workers", o.workers, format!("1..={max_workers} (each worker needs a stream of the device's pool, at most {} streams)", braid_runtime::config::MAX_POOL_SIZE)));
    }
    if !(o.max_delay_ms.is_finite() && (0.0..=MAX_DELAY_MS).contains(&o.max_delay_ms)) {
        return Err(bad("--max-delay-ms", o.max_delay_ms, format!("0..={MAX_DELAY_MS}")));
    }
    if o.deadline_ms > MAX_DEADLINE_MS {
        return Err(bad("--deadline-ms", o.deadline_ms, format!("0..={MAX_DEADLINE_MS} (0: no deadline)")));
    }
    let fds = braid_serve::conn::fd_limit();
    let max_conn_bound = fds.map(|n| n.saturating_sub(braid_serve::conn::FD_RESERVE + 64)).unwrap_or(65_536).clamp(1, 65_536);
    let max_connections = match o.max_connections {
        Some(n) if (1..=max_conn_bound).contains(&n) => n,
        Some(n) => return Err(bad("--max-connections", n, format!("1..={max_conn_bound} (the open-file limit, ulimit -n, is {}, less descriptors kept for the model and the rejecters)", fds.map(|n| n.to_string()).unwrap_or_else(|| "unknown".into())))),
        None => braid_serve::conn::default_max_connections(),
    };
    let tokenize_concurrency = match o.tokenize_concurrency {
        Some(n) if (1..=MAX_TOKENIZE).contains(&n) => n,
        Some(n) => return Err(bad("--tokenize-concurrency", n, format!("1..={MAX_TOKENIZE}"))),
        None => braid_serve::state::default_tokenize_concurrency(),
    };
    let conn = ConnConfig {
        header_read_timeout: seconds("--header-read-timeout", o.header_read_timeout)?,
        keep_alive_timeout: seconds("--keep-alive-timeout", o.keep_alive_timeout)?,
        shutdown_timeout: seconds("--shutdown-timeout", o.shutdown_timeout)?,
        max_connections,
    };
    let cache = parse_bytes(&o.max_cache_bytes, &o.device)?;
    let config = ServeConfig {
        batcher: BatcherConfig {
            max_batch_size: o.max_batch,
            max_queue_delay: Duration::from_secs_f64(o.max_delay_ms / 1e3),
            workers: o.workers,
            capacity: o.capacity,
            default_deadline: (o.deadline_ms > 0).then(|| Duration::from_millis(o.deadline_ms)),
            ..BatcherConfig::default()
        },
        max_inputs: o.max_inputs,
        conn,
        api_key: None,
        tokenize_concurrency,
    };
    Ok((config, cache))
}

/// Host memory that is freed goes back to the OS instead of staying in
/// glibc's arenas: blocks of 1 MiB and more (batch activations on the CPU
/// device, response buffers) are mmapped and unmapped on free, and the
/// arenas are at most 2 (one per thread otherwise, each keeping its peak).
/// A variable the operator set (`MALLOC_MMAP_THRESHOLD_`,
/// `MALLOC_ARENA_MAX`) wins. Measured: RSS after warm-up drifted 38% without
/// this and 6.5% with it (scripts/serve-soak.sh, 60 s, 2 cores).
fn bound_host_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            // SAFETY: mallopt only changes glibc's malloc tunables; called
            // before the runtime's threads start.
            unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
        }
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: as above.
            unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
        }
    }
}

pub fn run(o: &Options) -> Result<ExitCode> {
    let (config, cache) = config(o)?;
    bound_host_malloc();
    let io = |e: std::io::Error| Error::Io { path: format!("{}:{}", o.host, o.port), message: e.to_string() };
    // The address first: a port in use is reported before the model loads.
    let std_listener = std::net::TcpListener::bind((o.host.as_str(), o.port)).map_err(io)?;
    std_listener.set_nonblocking(true).map_err(io)?;
    let options = DeviceOptions { high_watermark: cache, ..DeviceOptions::from_env()? };
    let device = Device::parse_with(&o.device, options)?;
    eprintln!("serve: loading {} on {} (device cache budget: {})", o.model, device.name(), cache.map(|b| format!("{b} bytes")).unwrap_or_else(|| "unlimited".into()));
    let embedder = Arc::new(SentenceEmbedder::load(&o.model, &device)?);
    // Loading bound this thread to a stream of the pool; give it back so
    // the batcher's workers have every worker stream.
    device.pool().release_current();
    let shutdown_timeout = config.conn.shutdown_timeout;
    let state = AppState::new(embedder, device.name(), config)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(io)?;
    let served = rt.block_on(async {
        let listener = tokio::net::TcpListener::from_std(std_listener).map_err(io)?;
        let addr = listener.local_addr().map_err(io)?;
        eprintln!("serve: listening on http://{addr} (POST /embed, POST /v1/embeddings, GET /health, /info, /metrics); Ctrl-C stops");
        braid_serve::serve(listener, state, shutdown_signal(shutdown_timeout)).await.map_err(io)
    });
    // Tasks still running (a tokenization, a batcher drain past the
    // timeout) are not waited for.
    rt.shutdown_background();
    served?;
    eprintln!("serve: stopped (requests in flight answered, batcher drained, unless said otherwise above)");
    Ok(ExitCode::SUCCESS)
}

/// Resolves on the first SIGINT or SIGTERM. From then on, a second signal
/// exits the process at once (status 130), and so does the shutdown timeout
/// passing with a second of grace (status 1): a shutdown never hangs.
async fn shutdown_signal(timeout: Duration) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let t = tx.clone();
    tokio::spawn(async move {
        loop {
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
            if t.send("SIGINT").is_err() {
                return;
            }
        }
    });
    #[cfg(unix)]
    if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                if tx.send("SIGTERM").is_err() {
                    return;
                }
            }
        });
    }
    let Some(first) = rx.recv().await else { return std::future::pending().await };
    eprintln!("serve: {first}: shutting down (finishing requests in flight, at most {timeout:?}; a second signal exits at once)");
    tokio::spawn(async move {
        if let Some(second) = rx.recv().await {
            eprintln!("serve: {second} again: exiting now");
            std::process::exit(130);
        }
    });
    std::thread::spawn(move || {
        std::thread::sleep(timeout + Duration::from_secs(1));
        eprintln!("serve: still shutting down {timeout:?} after the signal (--shutdown-timeout): exiting now");
        std::process::exit(1);
    });
}

//! `braid serve`: binds the address first (a port in use is reported before
//! the model loads), checks every option against its bounds, loads the
//! model, starts braid-serve's HTTP server and runs until SIGINT or
//! SIGTERM; then finishes the requests in flight and drains the batcher,
//! within `--shutdown-timeout`. A second signal exits at once. Owns the
//! command-line options (each also settable from a `BRAID_*` environment
//! variable, as TEI allows for containers), their bounds and translation
//! to `ServeConfig`, the device's cache budget, signals, and the runtime
//! set-up. The fault drill (`BRAID_INJECT_FAULT`) is checked before the
//! model loads and armed once listening (`crate::drill`).

use braid_batch::{BatchPolicy, BatcherConfig};
use braid_nn::SentenceEmbedder;
use braid_runtime::{Device, DeviceOptions, Error, Result};
use braid_serve::{AppState, ConnConfig, ServeConfig};
use clap::{ArgAction, Args};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct Options {
    /// The model directory (scripts/get-minilm.sh puts it in models/all-MiniLM-L6-v2).
    #[arg(long, env = "BRAID_MODEL", default_value = "models/all-MiniLM-L6-v2")]
    pub model: String,
    /// The model's name on the wire (/info's model_id, OpenAI's model); default: the directory's name.
    #[arg(long, env = "BRAID_MODEL_ID")]
    pub model_id: Option<String>,
    /// auto, cpu, cuda, cuda:N, or several devices: cuda:all, cuda:0,1, cpu:0,1 (one model replica each, one queue in front).
    #[arg(long, env = "BRAID_DEVICE", default_value = "auto")]
    pub device: String,
    /// Weights and activations in f32 (default), f16 or bf16 (GEMMs on tensor cores, f32 accumulation; half needs a GPU).
    #[arg(long, env = "BRAID_DTYPE", default_value = "f32", value_parser = crate::parse_dtype)]
    pub dtype: braid_runtime::DType,
    #[arg(long, env = "BRAID_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// 0: an ephemeral port (printed at start-up).
    #[arg(long, env = "BRAID_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Largest batch the batcher forms (texts, 1..=4096). TEI: --max-batch-requests.
    #[arg(long, env = "BRAID_MAX_BATCH", alias = "max-batch-requests", default_value_t = 32)]
    pub max_batch: usize,
    /// Token budget of one batch (texts x longest text, as padded); must be at least the model's max input length.
    #[arg(long, env = "BRAID_MAX_BATCH_TOKENS")]
    pub max_batch_tokens: Option<usize>,
    /// How long the oldest waiting text waits for others (milliseconds, 0..=60000); under --batch-policy eager only an upper bound (never waited out).
    #[arg(long, env = "BRAID_MAX_DELAY_MS", default_value_t = 2.0)]
    pub max_delay_ms: f64,
    /// When a batch starts: eager (a free worker starts at once with what is queued; texts gather only while every worker is busy), wait (gather until the batch is full or --max-delay-ms has passed, the original's policy) or follow (a free worker starts once as many texts are queued as the last batch held, or at --max-delay-ms).
    #[arg(long, env = "BRAID_BATCH_POLICY", default_value = "eager")]
    pub batch_policy: String,
    /// Batcher worker threads, each running whole batches on its own stream of the device's pool (1..=64, and no more than the pool's worker streams).
    #[arg(long, env = "BRAID_WORKERS", default_value_t = 2)]
    pub workers: usize,
    /// Texts waiting, at most (1..=1000000); a request whose texts do not all fit gets 429. TEI: --max-concurrent-requests.
    #[arg(long, env = "BRAID_CAPACITY", default_value_t = 4096)]
    pub capacity: usize,
    /// Texts in one request, at most (1..=65536, and at most --capacity); beyond it 413.
    #[arg(long = "max-client-batch-size", env = "BRAID_MAX_CLIENT_BATCH_SIZE", alias = "max-inputs", default_value_t = 256)]
    pub max_inputs: usize,
    /// Request bodies larger than this many bytes get 413.
    #[arg(long, env = "BRAID_PAYLOAD_LIMIT", default_value_t = 2_000_000)]
    pub payload_limit: usize,
    /// A text not started within this many milliseconds gets 504 (0: no deadline; at most 3600000).
    #[arg(long, env = "BRAID_DEADLINE_MS", default_value_t = 0)]
    pub deadline_ms: u64,
    /// Truncate texts over the model's length unless a request sets truncate (false: such a text is a 413).
    #[arg(long, env = "BRAID_AUTO_TRUNCATE", default_value_t = true, action = ArgAction::Set)]
    pub auto_truncate: bool,
    /// A prompt prepended to every text whose request names none.
    #[arg(long, env = "BRAID_DEFAULT_PROMPT")]
    pub default_prompt: Option<String>,
    /// The name of a prompt in the model's config_sentence_transformers.json to prepend by default.
    #[arg(long, env = "BRAID_DEFAULT_PROMPT_NAME")]
    pub default_prompt_name: Option<String>,
    /// Require `Authorization: Bearer KEY` on every route except /health.
    #[arg(long, env = "BRAID_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Origins allowed by CORS, comma-separated (`*`: any); none: no CORS headers.
    #[arg(long, env = "BRAID_CORS_ALLOW_ORIGIN", value_delimiter = ',')]
    pub cors_allow_origin: Vec<String>,
    /// Log one line per request (to stderr).
    #[arg(long, env = "BRAID_LOG_REQUESTS", default_value_t = true, action = ArgAction::Set)]
    pub log_requests: bool,
    /// Log lines as JSON.
    #[arg(long, env = "BRAID_JSON_OUTPUT")]
    pub json_output: bool,
    /// How long /health's one-token probe forward may take (milliseconds).
    #[arg(long, env = "BRAID_HEALTH_TIMEOUT_MS", default_value_t = 10_000)]
    pub health_timeout_ms: u64,
    /// Seconds a request's head (request line and headers) may take to arrive, from its first byte (and a new connection, to send its first request); then the connection is closed.
    #[arg(long, env = "BRAID_HEADER_READ_TIMEOUT", default_value_t = 10.0)]
    pub header_read_timeout: f64,
    /// Seconds a keep-alive connection may sit idle between requests before it is closed.
    #[arg(long, env = "BRAID_KEEP_ALIVE_TIMEOUT", default_value_t = 30.0)]
    pub keep_alive_timeout: f64,
    /// Seconds a graceful shutdown may take; then open connections are closed and the process exits anyway. A second SIGINT/SIGTERM exits at once.
    #[arg(long, env = "BRAID_SHUTDOWN_TIMEOUT", default_value_t = 30.0)]
    pub shutdown_timeout: f64,
    /// Open connections, at most; above it a new connection gets a fast 503. Default: 1024, or less to fit the open-file limit (ulimit -n).
    #[arg(long, env = "BRAID_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Bytes the device's memory cache may hold (free blocks above it go back to the device/OS): a number with an optional K/M/G/T suffix, `auto` (256M on the CPU, 2G on a GPU) or `unlimited`.
    #[arg(long, env = "BRAID_MAX_CACHE_BYTES", default_value = "auto")]
    pub max_cache_bytes: String,
    /// Tokenizations running at once, at most (1..=256). Default: the number of cores.
    #[arg(long, env = "BRAID_TOKENIZE_CONCURRENCY")]
    pub tokenize_concurrency: Option<usize>,
    /// A cross-encoder (*ForSequenceClassification) directory for POST /rerank and /predict.
    #[arg(long, env = "BRAID_RERANKER")]
    pub reranker: Option<String>,
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
/// Largest `--payload-limit` (bytes).
pub const MAX_PAYLOAD: usize = 1 << 30;
/// Largest `--max-batch-tokens`.
pub const MAX_BATCH_TOKENS: usize = 1 << 24;

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
    // Every CPU device list (`cpu`, `cpu:0,1`) gets the host budget.
    let d = device.trim();
    if d == "cpu" || d.starts_with("cpu:") {
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
        return Err(bad("--max-client-batch-size (--max-inputs)", o.max_inputs, format!("1..={MAX_INPUTS}")));
    }
    if o.max_inputs > o.capacity {
        return Err(bad("--max-client-batch-size (--max-inputs)", o.max_inputs, format!("at most --capacity ({}): a larger request could never be queued", o.capacity)));
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
    if o.health_timeout_ms == 0 || o.health_timeout_ms > MAX_DEADLINE_MS {
        return Err(bad("--health-timeout-ms", o.health_timeout_ms, format!("1..={MAX_DEADLINE_MS}")));
    }
    if o.payload_limit == 0 || o.payload_limit > MAX_PAYLOAD {
        return Err(bad("--payload-limit", o.payload_limit, format!("1..={MAX_PAYLOAD} bytes")));
    }
    if o.api_key.as_deref() == Some("") {
        return Err(Error::InvalidArgument("--api-key is empty".into()));
    }
    if let Some(t) = o.max_batch_tokens {
        if !(1..=MAX_BATCH_TOKENS).contains(&t) {
            return Err(bad("--max-batch-tokens", t, format!("1..={MAX_BATCH_TOKENS}")));
        }
    }
    let cache = parse_bytes(&o.max_cache_bytes, &o.device)?;
    let policy: BatchPolicy = o.batch_policy.parse().map_err(|e| match e {
        Error::InvalidArgument(m) => Error::InvalidArgument(format!("--batch-policy: {m}")),
        e => e,
    })?;
    let config = ServeConfig {
        batcher: BatcherConfig {
            max_batch_size: o.max_batch,
            policy,
            max_queue_delay: Duration::from_secs_f64(o.max_delay_ms / 1e3),
            workers: o.workers,
            capacity: o.capacity,
            default_deadline: (o.deadline_ms > 0).then(|| Duration::from_millis(o.deadline_ms)),
            max_batch_tokens: o.max_batch_tokens,
            ..BatcherConfig::default()
        },
        max_inputs: o.max_inputs,
        model_id: o.model_id.clone(),
        auto_truncate: o.auto_truncate,
        default_prompt: o.default_prompt.clone(),
        default_prompt_name: o.default_prompt_name.clone(),
        api_key: o.api_key.clone(),
        cors_allow_origin: o.cors_allow_origin.clone(),
        payload_limit: o.payload_limit,
        json_log: o.json_output,
        log_requests: o.log_requests,
        health_timeout: Duration::from_millis(o.health_timeout_ms),
        conn,
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
    // The fault drill (BRAID_INJECT_FAULT): checked now, armed once listening.
    let faults = crate::drill::from_env()?;
    bound_host_malloc();
    let io = |e: std::io::Error| Error::Io { path: format!("{}:{}", o.host, o.port), message: e.to_string() };
    // The address first: a port in use is reported before the model loads.
    let std_listener = std::net::TcpListener::bind((o.host.as_str(), o.port)).map_err(io)?;
    std_listener.set_nonblocking(true).map_err(io)?;
    let options = DeviceOptions { high_watermark: cache, ..DeviceOptions::from_env()? };
    // One device, or several (`cuda:all`, `cuda:0,1`, `cpu:0,1`): one model
    // replica each, loaded in parallel, behind one batcher.
    let devices = Device::parse_many_with(&o.device, options)?;
    let faults = crate::drill::resolve(&faults, &devices)?;
    let device = devices[0].clone();
    let names: Vec<String> = devices.iter().map(|d| d.label().to_string()).collect();
    eprintln!("serve: loading {} in {} on {} ({}; device cache budget: {}; batch policy {})", o.model, o.dtype.name(), device.name(), names.join(", "), cache.map(|b| format!("{b} bytes each")).unwrap_or_else(|| "unlimited".into()), config.batcher.policy.name());
    let embedders: Vec<Arc<SentenceEmbedder>> = std::thread::scope(|s| {
        let loads: Vec<_> = devices
            .iter()
            .map(|d| {
                s.spawn(move || -> Result<Arc<SentenceEmbedder>> {
                    let e = SentenceEmbedder::load_with(&o.model, d, o.dtype)?;
                    // Loading bound this thread to a stream of the pool; give
                    // it back so the batcher's workers have every worker stream.
                    d.pool().release_current();
                    Ok(Arc::new(e))
                })
            })
            .collect();
        loads.into_iter().map(|h| h.join().unwrap_or_else(|p| Err(Error::JobPanicked(braid_runtime::panic_message(&p))))).collect::<Result<Vec<_>>>()
    })?;
    let embedder = embedders[0].clone();
    let shutdown_timeout = config.conn.shutdown_timeout;
    let reranker = match &o.reranker {
        Some(dir) => {
            eprintln!("serve: loading reranker {dir}");
            Some(Arc::new(braid_nn::CrossEncoder::load(dir, &device)?))
        }
        None => None,
    };
    let label = if devices.len() > 1 { format!("{} x {}", devices.len(), device.name()) } else { device.name() };
    drop(embedder);
    let state = AppState::with_replicas(embedders, reranker, label, config)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(io)?;
    let served = rt.block_on(async {
        let listener = tokio::net::TcpListener::from_std(std_listener).map_err(io)?;
        let addr = listener.local_addr().map_err(io)?;
        eprintln!("serve: listening on http://{addr} (TEI: POST /embed, /, /embed_all, /similarity, /tokenize, /decode, /rerank, /predict; OpenAI: POST /v1/embeddings; GET /health, /info, /metrics); Ctrl-C stops");
        crate::drill::arm(faults, "serve");
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

#[cfg(test)]
mod tests {
    use super::auto_cache_bytes;

    #[test]
    fn cpu_device_lists_get_the_host_cache_budget() {
        assert_eq!(auto_cache_bytes("cpu"), 256 << 20);
        assert_eq!(auto_cache_bytes("cpu:0,1"), 256 << 20);
        assert_eq!(auto_cache_bytes("cuda:all"), 2 << 30);
    }
}

//! `braid serve`: loads the model, starts braid-serve's HTTP server on the
//! given address and runs until Ctrl-C (or SIGTERM), then finishes the
//! requests in flight and drains the batcher. Owns the command-line options
//! (each also settable from a `BRAID_*` environment variable, as TEI
//! allows for containers), their translation to `ServeConfig`, and the
//! runtime set-up.

use braid_batch::BatcherConfig;
use braid_nn::SentenceEmbedder;
use braid_runtime::{Device, Error, Result};
use braid_serve::{AppState, ServeConfig};
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
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, env = "BRAID_DEVICE", default_value = "auto")]
    pub device: String,
    #[arg(long, env = "BRAID_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// 0: an ephemeral port (printed at start-up).
    #[arg(long, env = "BRAID_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Largest batch the batcher forms (texts). TEI: --max-batch-requests.
    #[arg(long, env = "BRAID_MAX_BATCH", alias = "max-batch-requests", default_value_t = 32)]
    pub max_batch: usize,
    /// Token budget of one batch (texts x longest text, as padded); must be at least the model's max input length.
    #[arg(long, env = "BRAID_MAX_BATCH_TOKENS")]
    pub max_batch_tokens: Option<usize>,
    /// How long the oldest waiting text waits for others (milliseconds).
    #[arg(long, env = "BRAID_MAX_DELAY_MS", default_value_t = 2.0)]
    pub max_delay_ms: f64,
    /// Batcher worker threads (each runs whole batches on its own stream).
    #[arg(long, env = "BRAID_WORKERS", default_value_t = 2)]
    pub workers: usize,
    /// Texts waiting, at most; a request whose texts do not all fit gets 429. TEI: --max-concurrent-requests.
    #[arg(long, env = "BRAID_CAPACITY", default_value_t = 4096)]
    pub capacity: usize,
    /// Texts in one request, at most; beyond it 413.
    #[arg(long = "max-client-batch-size", env = "BRAID_MAX_CLIENT_BATCH_SIZE", alias = "max-inputs", default_value_t = 256)]
    pub max_inputs: usize,
    /// Request bodies larger than this many bytes get 413.
    #[arg(long, env = "BRAID_PAYLOAD_LIMIT", default_value_t = 2_000_000)]
    pub payload_limit: usize,
    /// A text not started within this many milliseconds gets 504 (0: no deadline).
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
}

pub fn run(device: &Device, o: &Options) -> Result<ExitCode> {
    let max_delay = Duration::try_from_secs_f64(o.max_delay_ms / 1e3).map_err(|_| Error::InvalidArgument(format!("--max-delay-ms must be a non-negative number of milliseconds a Duration can hold (got {})", o.max_delay_ms)))?;
    if o.health_timeout_ms == 0 {
        return Err(Error::InvalidArgument("--health-timeout-ms must be at least 1".into()));
    }
    if o.payload_limit == 0 {
        return Err(Error::InvalidArgument("--payload-limit must be at least 1 byte".into()));
    }
    if o.api_key.as_deref() == Some("") {
        return Err(Error::InvalidArgument("--api-key is empty".into()));
    }
    let io = |e: std::io::Error| Error::Io { path: format!("{}:{}", o.host, o.port), message: e.to_string() };
    eprintln!("serve: loading {} on {}", o.model, device.name());
    let embedder = Arc::new(SentenceEmbedder::load(&o.model, device)?);
    let config = ServeConfig {
        batcher: BatcherConfig {
            max_batch_size: o.max_batch,
            max_queue_delay: max_delay,
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
    };
    let state = AppState::new(embedder, device.name(), config)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(io)?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind((o.host.as_str(), o.port)).await.map_err(io)?;
        let addr = listener.local_addr().map_err(io)?;
        eprintln!("serve: listening on http://{addr} (TEI: POST /embed, /, /embed_all, /similarity, /tokenize, /decode; OpenAI: POST /v1/embeddings; GET /health, /info, /metrics); Ctrl-C stops");
        braid_serve::serve(listener, state, shutdown_signal()).await.map_err(io)
    })?;
    eprintln!("serve: stopped (requests in flight answered, batcher drained)");
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("serve: shutting down");
}

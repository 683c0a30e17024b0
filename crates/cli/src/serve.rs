//! `braid serve`: loads the model, starts braid-serve's HTTP server on the
//! given address and runs until Ctrl-C (or SIGTERM), then finishes the
//! requests in flight and drains the batcher. Owns only the translation from
//! command-line options to `ServeConfig` and the runtime set-up.

use braid_batch::BatcherConfig;
use braid_nn::SentenceEmbedder;
use braid_runtime::{Device, Error, Result};
use braid_serve::{AppState, ServeConfig};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

pub struct Options {
    pub model: String,
    pub host: String,
    pub port: u16,
    pub max_batch: usize,
    pub max_delay_ms: f64,
    pub workers: usize,
    pub capacity: usize,
    pub max_inputs: usize,
    pub deadline_ms: u64,
    /// A cross-encoder for /rerank and /predict.
    pub reranker: Option<String>,
}

pub fn run(device: &Device, o: &Options) -> Result<ExitCode> {
    let max_delay = Duration::try_from_secs_f64(o.max_delay_ms / 1e3).map_err(|_| Error::InvalidArgument(format!("--max-delay-ms must be a non-negative number of milliseconds a Duration can hold (got {})", o.max_delay_ms)))?;
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
            ..BatcherConfig::default()
        },
        max_inputs: o.max_inputs,
    };
    let reranker = match &o.reranker {
        Some(dir) => {
            eprintln!("serve: loading reranker {dir}");
            Some(Arc::new(braid_nn::CrossEncoder::load(dir, device)?))
        }
        None => None,
    };
    let state = AppState::with_reranker(embedder, reranker, device.name(), config)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(io)?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind((o.host.as_str(), o.port)).await.map_err(io)?;
        let addr = listener.local_addr().map_err(io)?;
        eprintln!("serve: listening on http://{addr} (POST /embed, /v1/embeddings, /rerank, /predict, GET /health, /info, /metrics); Ctrl-C stops");
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

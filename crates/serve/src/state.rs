//! What every route shares: [`AppState`] (the model, the batcher over it,
//! the settings) and [`TokenEmbedder`], the batcher's view of the model.
//! Owns tokenizing off the async threads (each text cut first, see
//! [`crate::front`]; at most `tokenize_concurrency` tokenizations at once),
//! the start-up check that the batcher's workers fit the device's stream
//! pool, and submitting a request's texts.

use crate::conn::ConnConfig;
use braid_batch::{BatchModel, Batcher, BatcherConfig};
use braid_nn::{BertInput, SentenceEmbedder};
use braid_runtime::{Error, Result};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Token ids in, one normalised embedding out: the batcher's view of a
/// [`SentenceEmbedder`]. Rows are padded to the longest within a batch (the
/// batcher groups texts of similar length first).
pub struct TokenEmbedder(pub Arc<SentenceEmbedder>);

impl BatchModel for TokenEmbedder {
    type Input = Vec<u32>;
    type Output = Vec<f32>;
    type Worker = ();
    /// Binds the worker thread's stream now, so a pool too small for the
    /// workers fails at start-up, not on every request.
    fn worker(&self, _: usize) -> Result<()> {
        self.0.model().device().current_stream().map(|_| ())
    }
    fn len(&self, ids: &Vec<u32>) -> usize {
        ids.len()
    }
    fn forward(&self, _: &mut (), inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
        let input = BertInput::from_rows(&inputs, self.0.tokenizer().pad_id());
        let out = self.0.embed_input(&input)?.to_vec()?;
        Ok(out.chunks(self.0.dim()).map(|c| c.to_vec()).collect())
    }
}

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub batcher: BatcherConfig,
    /// Texts in one request, at most (more: 413).
    pub max_inputs: usize,
    /// Connections: timeouts, cap, shutdown bound.
    pub conn: ConnConfig,
    /// The API key, if one is required (`--api-key`). Without one, a
    /// loopback-bound server refuses non-loopback Host headers.
    pub api_key: Option<String>,
    /// Tokenizations running at once, at most (each on tokio's blocking
    /// pool); others wait their turn.
    pub tokenize_concurrency: usize,
}

/// The default for [`ServeConfig::tokenize_concurrency`]: the cores.
pub fn default_tokenize_concurrency() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            batcher: BatcherConfig { max_batch_size: 32, max_queue_delay: std::time::Duration::from_millis(2), ..BatcherConfig::default() },
            max_inputs: 256,
            conn: ConnConfig::default(),
            api_key: None,
            tokenize_concurrency: default_tokenize_concurrency(),
        }
    }
}

/// Tokenizer counters (statistics; for tests and the operator).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenizeStats {
    /// Texts tokenized.
    pub texts: u64,
    /// Bytes of text received in them.
    pub bytes_in: u64,
    /// Bytes handed to the tokenizer after cutting.
    pub bytes_tokenized: u64,
    /// Most tokenizations seen running at once.
    pub peak_running: usize,
}

#[derive(Default)]
struct TokenizeCounters {
    texts: AtomicU64,
    bytes_in: AtomicU64,
    bytes_tokenized: AtomicU64,
    running: AtomicUsize,
    peak_running: AtomicUsize,
}

/// What the handlers share.
pub struct AppState {
    pub(crate) embedder: Arc<SentenceEmbedder>,
    pub(crate) batcher: Batcher<TokenEmbedder>,
    pub(crate) config: ServeConfig,
    pub(crate) device: String,
    pub(crate) started: Instant,
    tokenizers: Arc<tokio::sync::Semaphore>,
    tok_counters: Arc<TokenizeCounters>,
}

impl AppState {
    /// Start the batcher's workers over `embedder`.
    pub fn new(embedder: Arc<SentenceEmbedder>, device: String, config: ServeConfig) -> Result<Arc<AppState>> {
        if config.max_inputs == 0 {
            return Err(Error::InvalidArgument("max_inputs must be at least 1".into()));
        }
        if config.tokenize_concurrency == 0 {
            return Err(Error::InvalidArgument("tokenize_concurrency must be at least 1".into()));
        }
        // Each batcher worker binds a stream of its own: the pool must have
        // a free worker stream for each (checked here with a clear message;
        // the workers then bind theirs before the server answers anything).
        let pool = embedder.model().device().pool();
        let free = pool.free_slots();
        let workers = config.batcher.workers;
        if pool.config().assignment == braid_runtime::Assignment::Exclusive && workers > free {
            return Err(Error::InvalidArgument(format!(
                "--workers {workers} needs {workers} worker streams but the device's stream pool has {free} free (pool size {}, BRAID_STREAM_POOL_SIZE): lower --workers or raise BRAID_STREAM_POOL_SIZE to at least {}",
                pool.size(),
                pool.size() + workers - free
            )));
        }
        let batcher = Batcher::new(Arc::new(TokenEmbedder(embedder.clone())), config.batcher.clone())?;
        let tokenizers = Arc::new(tokio::sync::Semaphore::new(config.tokenize_concurrency));
        Ok(Arc::new(AppState { embedder, batcher, config, device, started: Instant::now(), tokenizers, tok_counters: Arc::default() }))
    }

    /// The tokenizer's counters.
    pub fn tokenize_stats(&self) -> TokenizeStats {
        let c = &self.tok_counters;
        // Relaxed: statistics.
        TokenizeStats { texts: c.texts.load(Ordering::Relaxed), bytes_in: c.bytes_in.load(Ordering::Relaxed), bytes_tokenized: c.bytes_tokenized.load(Ordering::Relaxed), peak_running: c.peak_running.load(Ordering::Relaxed) }
    }

    /// The batcher's counters.
    pub fn stats(&self) -> braid_batch::BatcherStats {
        self.batcher.stats()
    }

    /// Stop taking requests and answer every one already accepted.
    pub fn shutdown(&self) {
        self.batcher.shutdown();
    }

    /// Token ids of `texts` (truncated to the model's length). Each text is
    /// cut first ([`crate::front::encode_cut`]), so a long text costs what
    /// is kept. Tokenizing takes a while, so it runs on tokio's blocking
    /// pool, not on the threads that drive connections, and at most
    /// `tokenize_concurrency` requests tokenize at once.
    pub async fn tokenize(&self, texts: Vec<String>) -> Result<Vec<Vec<u32>>> {
        let permit = self.tokenizers.clone().acquire_owned().await.map_err(|_| Error::ShutDown("the tokenizer is shut down".into()))?;
        let e = self.embedder.clone();
        let c = self.tok_counters.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            // Relaxed: statistics; the semaphore does the bounding.
            let now = c.running.fetch_add(1, Ordering::Relaxed) + 1;
            c.peak_running.fetch_max(now, Ordering::Relaxed);
            let r = texts
                .iter()
                .map(|t| {
                    let (ids, used) = crate::front::encode_cut(e.tokenizer(), t)?;
                    c.texts.fetch_add(1, Ordering::Relaxed);
                    c.bytes_in.fetch_add(t.len() as u64, Ordering::Relaxed);
                    c.bytes_tokenized.fetch_add(used as u64, Ordering::Relaxed);
                    Ok(ids)
                })
                .collect::<Result<Vec<_>>>();
            c.running.fetch_sub(1, Ordering::Relaxed);
            r
        })
        .await
        .map_err(|j| Error::JobPanicked(format!("tokenizer: {j}")))?
    }

    /// Embed token ids through the batcher (each text its own request).
    pub async fn embed_ids(&self, ids: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
        let mut handles = Vec::with_capacity(ids.len());
        for row in ids {
            handles.push(self.batcher.submit(row)?);
        }
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(h.await?);
        }
        Ok(out)
    }

    /// Tokenize and embed `texts`.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        let ids = self.tokenize(texts).await?;
        self.embed_ids(ids).await
    }
}


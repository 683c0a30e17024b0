//! What every route shares: [`AppState`] (the model, the batcher over it,
//! the settings) and [`TokenEmbedder`], the batcher's view of the model.
//! Owns tokenizing off the async threads and submitting a request's texts.

use braid_batch::{Batcher, BatcherConfig};
use braid_nn::SentenceEmbedder;
use braid_runtime::{Error, Result};
use std::sync::Arc;
use std::time::Instant;

/// The batcher's view of the model lives with the model (braid-nn), shared with the CLI.
pub use braid_nn::TokenEmbedder;

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub batcher: BatcherConfig,
    /// Texts in one request, at most (more: 413).
    pub max_inputs: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig { batcher: BatcherConfig { max_batch_size: 32, max_queue_delay: std::time::Duration::from_millis(2), ..BatcherConfig::default() }, max_inputs: 256 }
    }
}

/// What the handlers share.
pub struct AppState {
    pub(crate) embedder: Arc<SentenceEmbedder>,
    pub(crate) batcher: Batcher<TokenEmbedder>,
    pub(crate) config: ServeConfig,
    /// The cross-encoder behind `/rerank` and `/predict`, if one was given.
    pub(crate) reranker: Option<Arc<crate::routes::rerank::Reranker>>,
    pub(crate) device: String,
    pub(crate) started: Instant,
}

impl AppState {
    /// Start the batcher's workers over `embedder`.
    pub fn new(embedder: Arc<SentenceEmbedder>, device: String, config: ServeConfig) -> Result<Arc<AppState>> {
        Self::with_reranker(embedder, None, device, config)
    }

    /// As [`new`](Self::new), with a cross-encoder for `/rerank` and `/predict`.
    pub fn with_reranker(embedder: Arc<SentenceEmbedder>, reranker: Option<Arc<braid_nn::CrossEncoder>>, device: String, config: ServeConfig) -> Result<Arc<AppState>> {
        if config.max_inputs == 0 {
            return Err(Error::InvalidArgument("max_inputs must be at least 1".into()));
        }
        let batcher = Batcher::new(Arc::new(TokenEmbedder(embedder.clone())), config.batcher.clone())?;
        let reranker = reranker.map(|m| crate::routes::rerank::Reranker::new(m, config.batcher.clone()).map(Arc::new)).transpose()?;
        Ok(Arc::new(AppState { embedder, batcher, config, reranker, device, started: Instant::now() }))
    }

    /// The batcher's counters.
    pub fn stats(&self) -> braid_batch::BatcherStats {
        self.batcher.stats()
    }

    /// Stop taking requests and answer every one already accepted.
    pub fn shutdown(&self) {
        self.batcher.shutdown();
        if let Some(r) = &self.reranker {
            r.batcher.shutdown();
        }
    }

    /// Token ids of `texts` (truncated to the model's length). Tokenizing a
    /// long text takes a while, so it runs on tokio's blocking pool, not on
    /// the threads that drive connections.
    pub async fn tokenize(&self, texts: Vec<String>) -> Result<Vec<Vec<u32>>> {
        let e = self.embedder.clone();
        tokio::task::spawn_blocking(move || texts.iter().map(|t| e.tokenizer().encode(t)).collect::<Result<Vec<_>>>())
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


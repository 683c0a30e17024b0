//! What every route shares: [`AppState`] (the model, the batcher over it,
//! the settings, the metrics), [`ServeModel`] (the server's view of the
//! model: pooled embeddings, normalised or not, or token embeddings) and
//! [`TokenEmbedder`] (token ids in, normalised embedding out; the
//! in-process peer `braid bench story` measures). Owns submitting a
//! request's texts (all admitted or none), the per-request timings the
//! response headers report, the health probe, tokenizing (each text cut
//! first, see [`crate::front`]; a short request on its async thread, a
//! longer one on the blocking pool, at most `tokenize_concurrency` of those
//! at once), and the start-up check
//! that the batcher's workers fit the device's stream pool.

use crate::conn::ConnConfig;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::tokens::{Direction, ServeTokenizer};
use braid_batch::{BatchModel, Batcher, BatcherConfig, ReplicaStatus, Replicas};
use braid_nn::{ops, BertInput, SentenceEmbedder};
use braid_runtime::{Error, Result};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The batcher's view of the model lives with the model (braid-nn), shared with the CLI.
pub use braid_nn::TokenEmbedder;

/// What a text asks of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// The mean-pooled sentence embedding, L2-normalised or not.
    Pooled { normalize: bool },
    /// One embedding per token (the last hidden state, `/embed_all`).
    Tokens,
}

/// One text for the server's batcher (cloned only to retry a batch on
/// another device when one fails).
#[derive(Clone)]
pub struct Job {
    pub ids: Vec<u32>,
    pub want: Want,
}

/// A text's answer and when its batch ran.
pub struct JobOut {
    /// `dim` values (pooled) or `len × dim` (tokens).
    pub values: Vec<f32>,
    pub started: Instant,
    pub inference: Duration,
}

/// The server's view of the model: each batch runs the encoder and the
/// model's sentence-transformers modules once, and answers each text what
/// it asked for: the embedding as the model's modules make it, L2-normalised
/// (`normalize: true`, TEI's default, whatever the model's last module) or
/// not (the modules without a final Normalize), or the token embeddings.
pub struct ServeModel {
    embedder: Arc<SentenceEmbedder>,
    metrics: Arc<Metrics>,
}

impl BatchModel for ServeModel {
    type Input = Job;
    type Output = JobOut;
    type Worker = ();
    fn worker(&self, _: usize) -> Result<()> {
        Ok(())
    }
    fn len(&self, j: &Job) -> usize {
        j.ids.len()
    }
    fn forward(&self, _: &mut (), jobs: Vec<Job>) -> Result<Vec<JobOut>> {
        let started = Instant::now();
        let rows: Vec<Vec<u32>> = jobs.iter().map(|j| j.ids.clone()).collect();
        let input = BertInput::from_rows(&rows, self.embedder.tokenizer().pad_id());
        let d = self.embedder.dim();
        let hd = self.embedder.encoder().hidden_size();
        let (h, pooled) = self.embedder.forward_parts(&input)?;
        let any = |f: &dyn Fn(Want) -> bool| jobs.iter().any(|j| f(j.want));
        // The normalised rows come from the device's l2_normalize, exactly
        // as `braid embed` computes them.
        let normed = if any(&|w| w == Want::Pooled { normalize: true }) { Some(ops::l2_normalize(&pooled)?.to_vec()?) } else { None };
        let raw = if any(&|w| w == Want::Pooled { normalize: false }) { Some(pooled.to_vec()?) } else { None };
        // Token embeddings need the padded state (a packed one is gathered back).
        let hidden = if any(&|w| w == Want::Tokens) { Some(h.padded()?.0.to_vec()?) } else { None };
        let inference = started.elapsed();
        self.metrics.inference.observe(inference.as_secs_f64());
        self.metrics.batch_texts.observe(jobs.len() as f64);
        self.metrics.batch_tokens.observe((jobs.len() * input.seq) as f64);
        let mut out = Vec::with_capacity(jobs.len());
        for (i, j) in jobs.iter().enumerate() {
            let pick = |v: &Option<Vec<f32>>, from: usize, n: usize| v.as_ref().map(|v| v[from..from + n].to_vec()).unwrap_or_default();
            let values = match j.want {
                Want::Pooled { normalize: true } => pick(&normed, i * d, d),
                Want::Pooled { normalize: false } => pick(&raw, i * d, d),
                Want::Tokens => pick(&hidden, i * input.seq * hd, j.ids.len() * hd),
            };
            out.push(JobOut { values, started, inference });
        }
        Ok(out)
    }
}

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub batcher: BatcherConfig,
    /// Texts in one request, at most (more: 413). TEI's `max_client_batch_size`.
    pub max_inputs: usize,
    /// The model's name on the wire (`/info`, OpenAI's `model`); `None`:
    /// the model directory's name.
    pub model_id: Option<String>,
    /// Truncate texts over the model's length unless a request says
    /// otherwise (`truncate`); when false, such a text is a 413.
    pub auto_truncate: bool,
    /// Prepended to every text unless the request names a prompt.
    pub default_prompt: Option<String>,
    /// The name of a prompt of the model's config_sentence_transformers.json
    /// to prepend by default.
    pub default_prompt_name: Option<String>,
    /// A Bearer key every route except `/health` requires.
    pub api_key: Option<String>,
    /// `Access-Control-Allow-Origin` values (`*` for any); empty: no CORS.
    pub cors_allow_origin: Vec<String>,
    /// Request bodies larger than this are a 413.
    pub payload_limit: usize,
    /// One log line per request as JSON (else plain text).
    pub json_log: bool,
    /// Log one line per request at all.
    pub log_requests: bool,
    /// How long `/health`'s probe forward may take.
    pub health_timeout: Duration,
    /// Connections: timeouts, cap, shutdown bound.
    pub conn: ConnConfig,
    /// Tokenizations running at once on tokio's blocking pool, at most
    /// (requests over [`INLINE_TOKENIZE_BYTES`]); others wait their turn.
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
            model_id: None,
            auto_truncate: true,
            default_prompt: None,
            default_prompt_name: None,
            api_key: None,
            cors_allow_origin: Vec::new(),
            payload_limit: 2 * 1024 * 1024,
            json_log: false,
            log_requests: false,
            health_timeout: Duration::from_secs(10),
            conn: ConnConfig::default(),
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
    /// The first replica: what `/info`, the tokenizer and the shapes come from.
    pub(crate) embedder: Arc<SentenceEmbedder>,
    /// One replica per device (`--device cuda:all`, `cpu:0,1`), in device order.
    pub(crate) embedders: Vec<Arc<SentenceEmbedder>>,
    /// The batcher over every replica: one admission queue, each device's
    /// own workers (see `braid_batch::Replicas`).
    pub(crate) batcher: Batcher<Replicas<ServeModel>>,
    pub(crate) replicas: Arc<Replicas<ServeModel>>,
    pub(crate) config: ServeConfig,
    /// The cross-encoder behind `/rerank` and `/predict`, if one was given.
    pub(crate) reranker: Option<Arc<crate::routes::rerank::Reranker>>,
    pub(crate) device: String,
    pub(crate) started: Instant,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) tokenizer: Arc<ServeTokenizer>,
    pub(crate) model_id: String,
    /// The model's named prompts (config_sentence_transformers.json).
    pub(crate) prompts: std::collections::BTreeMap<String, String>,
    /// The prompt prepended when a request names none.
    pub(crate) default_prompt: Option<String>,
    tokenizers: Arc<tokio::sync::Semaphore>,
    tok_counters: Arc<TokenizeCounters>,
}

/// Per-request timings for the response headers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    pub tokenization: Duration,
    /// Longest queue wait of the request's texts.
    pub queue: Duration,
    /// Longest forward among the request's batches.
    pub inference: Duration,
    pub tokens: usize,
}

/// A request whose texts (prompt included) total at most this many bytes is
/// tokenized on the async thread that handles it (see
/// [`AppState::tokenize_request`]); a longer one goes to the blocking pool,
/// at most `tokenize_concurrency` at once. 4 KiB: about 1,000 tokens of
/// English, a few hundred microseconds of tokenizing at most.
pub const INLINE_TOKENIZE_BYTES: usize = 4 << 10;

/// The embedding routes' tokenization of `texts`, counted in `c`.
fn encode_all(tok: &ServeTokenizer, c: &TokenizeCounters, texts: &[String], prompt: Option<&str>, truncate: bool, dir: Direction) -> std::result::Result<Vec<Vec<u32>>, ApiError> {
    texts
        .iter()
        .map(|s| {
            let (ids, used) = match prompt {
                Some(p) => tok.encode_ids_counted(&format!("{p}{s}"), true, truncate, dir)?,
                None => tok.encode_ids_counted(s, true, truncate, dir)?,
            };
            // Relaxed: statistics.
            c.texts.fetch_add(1, Ordering::Relaxed);
            c.bytes_in.fetch_add(s.len() as u64, Ordering::Relaxed);
            c.bytes_tokenized.fetch_add(used.min(s.len()) as u64, Ordering::Relaxed);
            Ok(ids)
        })
        .collect()
}

impl AppState {
    /// Start the batcher's workers over `embedder`.
    pub fn new(embedder: Arc<SentenceEmbedder>, device: String, config: ServeConfig) -> Result<Arc<AppState>> {
        Self::with_reranker(embedder, None, device, config)
    }

    /// As [`new`](Self::new), with a cross-encoder for `/rerank` and `/predict`.
    pub fn with_reranker(embedder: Arc<SentenceEmbedder>, reranker: Option<Arc<braid_nn::CrossEncoder>>, device: String, config: ServeConfig) -> Result<Arc<AppState>> {
        Self::with_replicas(vec![embedder], reranker, device, config)
    }

    /// One replica of the model per device (the same model directory loaded
    /// on each), behind one batcher with `config.batcher.workers` workers per
    /// device; a device that fails leaves rotation and the rest serve.
    pub fn with_replicas(embedders: Vec<Arc<SentenceEmbedder>>, reranker: Option<Arc<braid_nn::CrossEncoder>>, device: String, config: ServeConfig) -> Result<Arc<AppState>> {
        let Some(embedder) = embedders.first().cloned() else { return Err(Error::InvalidArgument("the server needs at least one model replica".into())) };
        for e in &embedders[1..] {
            if e.dim() != embedder.dim() || e.max_seq_length() != embedder.max_seq_length() || e.dir() != embedder.dir() {
                return Err(Error::InvalidArgument(format!("replicas must be the same model: {} and {} differ", embedder.dir().display(), e.dir().display())));
            }
        }
        if config.max_inputs == 0 {
            return Err(Error::InvalidArgument("max_inputs must be at least 1".into()));
        }
        if config.tokenize_concurrency == 0 {
            return Err(Error::InvalidArgument("tokenize_concurrency must be at least 1".into()));
        }
        // Each batcher worker binds a stream of its own: the pool must have
        // a free worker stream for each (checked here with a clear message;
        // the workers then bind theirs before the server answers anything).
        for e in &embedders {
            let pool = e.encoder().device().pool();
            let free = pool.free_slots();
            let workers = config.batcher.workers;
            if pool.config().assignment == braid_runtime::Assignment::Exclusive && workers > free {
                return Err(Error::InvalidArgument(format!(
                    "--workers {workers} needs {workers} worker streams but the device's stream pool has {free} free (pool size {}, BRAID_STREAM_POOL_SIZE): lower --workers or raise BRAID_STREAM_POOL_SIZE to at least {}",
                    pool.size(),
                    pool.size() + workers - free
                )));
            }
        }
        if let Some(t) = config.batcher.max_batch_tokens {
            if t < embedder.max_seq_length() {
                return Err(Error::InvalidArgument(format!("--max-batch-tokens {t} is below the model's max input length {}: a long text could never run", embedder.max_seq_length())));
            }
        }
        let (prompts, st_default) = crate::tokens::read_prompts(embedder.dir())?;
        let default_prompt = match (&config.default_prompt, &config.default_prompt_name) {
            (Some(_), Some(_)) => return Err(Error::InvalidArgument("give --default-prompt or --default-prompt-name, not both".into())),
            (Some(p), None) => Some(p.clone()),
            (None, Some(n)) => Some(prompts.get(n).cloned().ok_or_else(|| Error::InvalidArgument(format!("--default-prompt-name {n:?}: the model has no such prompt (it has: {:?})", prompts.keys().collect::<Vec<_>>())))?),
            (None, None) => st_default.and_then(|n| prompts.get(&n).cloned()),
        };
        let tokenizer = Arc::new(ServeTokenizer::load(embedder.dir(), embedder.max_seq_length(), embedder.encoder().vocab_size(), embedder.modules().sbert.do_lower_case)?);
        let model_id = config.model_id.clone().unwrap_or_else(|| embedder.dir().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into()));
        let metrics = Arc::new(Metrics::new());
        let replicas = Arc::new(Replicas::new(embedders.iter().map(|e| (e.encoder().device().label().to_string(), ServeModel { embedder: e.clone(), metrics: metrics.clone() })).collect())?);
        // Workers per device: worker i serves device i % n.
        let batcher = Batcher::new(replicas.clone(), BatcherConfig { workers: config.batcher.workers * embedders.len(), ..config.batcher.clone() })?;
        let tokenizers = Arc::new(tokio::sync::Semaphore::new(config.tokenize_concurrency));
        let reranker = reranker.map(|m| crate::routes::rerank::Reranker::new(m, config.batcher.clone()).map(Arc::new)).transpose()?;
        Ok(Arc::new(AppState { embedder, embedders, batcher, replicas, config, reranker, device, started: Instant::now(), metrics, tokenizer, model_id, prompts, default_prompt, tokenizers, tok_counters: Arc::default() }))
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
        if let Some(r) = &self.reranker {
            r.batcher.shutdown();
        }
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

    /// The embedding routes' tokenizer: `prompt` prepended, special tokens
    /// added, cut to the model's length from `dir` when `truncate` (else a
    /// text over it is a 413). On tokio's blocking pool, like [`tokenize`](Self::tokenize);
    /// records the tokenization time.
    ///
    /// Each text is cut before it is tokenized ([`crate::front`]), so a long
    /// text costs what is kept. A short request (at most
    /// [`INLINE_TOKENIZE_BYTES`]) is tokenized on the async thread; longer
    /// ones on the blocking pool, at most `tokenize_concurrency` at once (the
    /// rest wait their turn here).
    pub(crate) async fn tokenize_request(&self, texts: Vec<String>, prompt: Option<String>, truncate: bool, dir: Direction, t: &mut Timings) -> std::result::Result<Vec<Vec<u32>>, ApiError> {
        let t0 = Instant::now();
        let bytes = texts.iter().map(|s| s.len() + prompt.as_ref().map_or(0, |p| p.len())).sum::<usize>();
        let ids = if bytes <= INLINE_TOKENIZE_BYTES {
            // A short request (the common one-text case): tokenizing costs
            // tens of microseconds, less than the two thread hand-offs of the
            // blocking pool, so it runs here. Bounded without the semaphore:
            // at most one such request per runtime thread, each at most
            // INLINE_TOKENIZE_BYTES.
            encode_all(&self.tokenizer, &self.tok_counters, &texts, prompt.as_deref(), truncate, dir)?
        } else {
            let permit = self.tokenizers.clone().acquire_owned().await.map_err(|_| ApiError::from(Error::ShutDown("the tokenizer is shut down".into())))?;
            let tok = self.tokenizer.clone();
            let c = self.tok_counters.clone();
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                // Relaxed: statistics; the semaphore does the bounding.
                let now = c.running.fetch_add(1, Ordering::Relaxed) + 1;
                c.peak_running.fetch_max(now, Ordering::Relaxed);
                let r = encode_all(&tok, &c, &texts, prompt.as_deref(), truncate, dir);
                c.running.fetch_sub(1, Ordering::Relaxed);
                r
            })
            .await
            .map_err(|j| ApiError::from(Error::JobPanicked(format!("tokenizer: {j}"))))??
        };
        t.tokenization = t0.elapsed();
        self.metrics.tokenization.observe(t.tokenization.as_secs_f64());
        Ok(ids)
    }

    /// Run `jobs` through the batcher, all admitted or none (`Overloaded`).
    /// Dropping the returned future (a client that went away) drops the
    /// handles: texts not yet started are skipped and counted cancelled.
    pub async fn run_jobs(&self, jobs: Vec<Job>, t: &mut Timings) -> Result<Vec<Vec<f32>>> {
        t.tokens += jobs.iter().map(|j| j.ids.len()).sum::<usize>();
        let submitted = Instant::now();
        let handles = self.batcher.submit_all(jobs)?;
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            let o = h.await?;
            let q = o.started.saturating_duration_since(submitted);
            self.metrics.queue_wait.observe(q.as_secs_f64());
            t.queue = t.queue.max(q);
            t.inference = t.inference.max(o.inference);
            out.push(o.values);
        }
        Ok(out)
    }

    /// Tokenize (right-truncated) and embed `texts`, normalised: what
    /// `braid embed` computes, through the batcher.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        let ids = self.tokenize(texts).await?;
        let jobs = ids.into_iter().map(|ids| Job { ids, want: Want::Pooled { normalize: true } }).collect();
        self.run_jobs(jobs, &mut Timings::default()).await
    }

    /// The probe behind `/health`: a one-token forward (`[CLS] [SEP]`)
    /// straight on the model (not through the queue, so a busy server is
    /// still healthy), on the blocking pool, within `health_timeout`.
    pub async fn probe(&self) -> Result<Duration> {
        // The first device in rotation; a device that fails the probe with
        // a device error leaves rotation, and the next one is probed.
        loop {
            let Some(i) = self.replicas.status().iter().position(|r| r.serving) else {
                return Err(Error::DevicePoisoned { device: "every device".into(), cause: "no device is in rotation".into() });
            };
            match self.probe_on(i).await {
                Err(e) if braid_batch::condemns_device(&e) => self.replicas.take_out(i, e.to_string()),
                other => return other,
            }
        }
    }

    /// Each device's replica: name, in rotation, why not, batches.
    pub fn devices(&self) -> Vec<ReplicaStatus> {
        self.replicas.status()
    }

    async fn probe_on(&self, replica: usize) -> Result<Duration> {
        let e = self.embedders[replica].clone();
        let ids = self.tokenizer.encode_ids("", true, false, crate::tokens::Direction::Right).map_err(|e| Error::InvalidArgument(e.message))?;
        let t0 = Instant::now();
        let job = tokio::task::spawn_blocking(move || -> Result<()> {
            let input = BertInput::from_rows(&[ids], e.tokenizer().pad_id());
            let v = e.embed_input(&input)?.to_vec()?;
            if v.iter().all(|x| x.is_finite()) {
                Ok(())
            } else {
                Err(Error::InvalidArgument("the probe forward returned NaN or infinity".into()))
            }
        });
        match tokio::time::timeout(self.config.health_timeout, job).await {
            Err(_) => Err(Error::Timeout(self.config.health_timeout)),
            Ok(Err(j)) => Err(Error::JobPanicked(format!("health probe: {j}"))),
            Ok(Ok(r)) => r.map(|_| t0.elapsed()),
        }
    }

    /// The devices' allocators' (allocated, reserved) bytes, summed.
    pub fn allocator_bytes(&self) -> (usize, usize) {
        self.embedders.iter().map(|e| e.encoder().device().allocator().stats()).fold((0, 0), |(a, r), s| (a + s.allocated, r + s.reserved))
    }

    /// Each device's label and allocator (allocated, reserved) bytes.
    pub fn allocator_bytes_by_device(&self) -> Vec<(String, usize, usize)> {
        self.embedders
            .iter()
            .map(|e| {
                let d = e.encoder().device();
                let s = d.allocator().stats();
                (d.label().to_string(), s.allocated, s.reserved)
            })
            .collect()
    }
}

//! The workloads `braid bench story` drives: adapters from braid-nn's models
//! to the story's [`Bench`] trait (`mlp`, `encoder`, `minilm`).

use crate::report::Row;
use crate::story::Bench;
use braid_nn::reference::{self as refops, rel_err};
use braid_nn::{workloads as wl, BertInput, Mlp, SentenceEmbedder, Tensor, TransformerEncoderLayer};
use braid_runtime::{Activation, Device, Result};
use std::sync::Arc;

pub struct MlpBench {
    pub device: Device,
    pub model: Arc<Mlp>,
}

impl MlpBench {
    pub fn new(device: &Device) -> Result<Self> {
        Ok(MlpBench { device: device.clone(), model: Arc::new(wl::mlp(device)?) })
    }
}

impl Bench for MlpBench {
    type Input = Tensor;
    type Output = Tensor;
    fn name(&self) -> &'static str {
        "mlp"
    }
    fn batches(&self) -> Vec<usize> {
        vec![1, 8, 64, 256]
    }
    fn input(&self, batch: usize, seed: u64) -> Result<Tensor> {
        wl::mlp_input_tensor(&self.device, batch, seed)
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.model.forward(x)
    }
    fn correctness(&self) -> Result<Vec<(String, f64)>> {
        let mut rows = Vec::new();
        for batch in [1usize, 8] {
            let seed = crate::fresh_seed();
            let x = wl::mlp_input(batch, seed);
            let out = self.model.forward(&Tensor::from_slice(&self.device, &x, &[batch, 512])?)?.to_vec()?;
            let reference = refops::mlp(&wl::mlp_weights()?, "", &wl::MLP_DIMS, Activation::Relu, &x, batch)?;
            rows.push((format!("mlp f32 batch {batch} vs f64"), rel_err(&out, &reference)));
        }
        Ok(rows)
    }
    fn dynamic(all: &[Self], replicated: bool, clients: &[usize], seconds: f64) -> Result<Vec<Row>> {
        crate::dynamic::mlp(all, replicated, clients, seconds)
    }
    fn graphs(&self) -> bool {
        self.device.capabilities().graph_capture
    }
}

pub struct EncoderBench {
    pub device: Device,
    pub model: Arc<TransformerEncoderLayer>,
}

impl EncoderBench {
    pub fn new(device: &Device) -> Result<Self> {
        Ok(EncoderBench { device: device.clone(), model: Arc::new(wl::encoder(device)?) })
    }
}

impl Bench for EncoderBench {
    type Input = Tensor;
    type Output = Tensor;
    fn name(&self) -> &'static str {
        "encoder"
    }
    fn batches(&self) -> Vec<usize> {
        vec![1, 8, 64, 256]
    }
    fn input(&self, batch: usize, seed: u64) -> Result<Tensor> {
        wl::encoder_input_tensor(&self.device, batch, seed)
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.model.forward(x, None)
    }
    fn correctness(&self) -> Result<Vec<(String, f64)>> {
        let batch = 2;
        let x = wl::encoder_input(batch, crate::fresh_seed());
        let out = self.model.forward(&Tensor::from_slice(&self.device, &x, &[batch, wl::ENCODER_SEQ, wl::ENCODER_DIM])?, None)?.to_vec()?;
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let reference = refops::encoder_layer(&wl::encoder_weights()?, "", wl::ENCODER_DIM, wl::ENCODER_HEADS, wl::ENCODER_FF, Activation::Relu, wl::ENCODER_EPS as f64, &x64, None, batch, wl::ENCODER_SEQ)?;
        Ok(vec![(format!("encoder f32 batch {batch} vs f64"), rel_err(&out, &reference))])
    }
    fn dynamic(all: &[Self], replicated: bool, clients: &[usize], seconds: f64) -> Result<Vec<Row>> {
        crate::dynamic::encoder(all, replicated, clients, seconds)
    }
    fn graphs(&self) -> bool {
        self.device.capabilities().graph_capture
    }
}

/// A sentence embedder on token ids of sequence length 128 (capped at the
/// model's max length): all-MiniLM-L6-v2 by default (scripts/get-minilm.sh),
/// or any model directory braid loads (`--model DIR`).
pub struct MiniLmBench {
    pub model: Arc<SentenceEmbedder>,
    /// The mixed-length set ([`mixed_rows`]) instead of 128 tokens a text.
    pub mixed: bool,
}

/// The mixed-length set shared with `bench/peers/torch_story.py --workload
/// mixed`: row `i` of `n` is `[cls] ids [sep]` with a length of
/// `8 + floor(249·u⁴)` tokens (8..=256, mean ≈ 58), capped at `max_len`,
/// and ids in 1000..21000, all drawn from splitmix64 seeded 2026 (`u` is
/// the top 53 bits as a fraction). Both sides build the same rows.
pub fn mixed_rows(n: usize, cls: u32, sep: u32, max_len: usize) -> Vec<Vec<u32>> {
    let mut state: u64 = 2026;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    (0..n)
        .map(|_| {
            let u = (next() >> 11) as f64 / (1u64 << 53) as f64;
            let len = (8 + (249.0 * u.powi(4)) as usize).min(max_len).max(2);
            let mut r = vec![cls];
            r.extend((0..len - 2).map(|_| 1000 + (next() % 20_000) as u32));
            r.push(sep);
            r
        })
        .collect()
}

/// The reference embeddings made by sentence-transformers (scripts/make-reference.py).
pub(crate) const FIXTURE: &str = include_str!("../../nn/tests/fixtures/minilm_reference.json");

/// Sentences of varied length for the dynamic rows.
pub fn sample_texts() -> Vec<String> {
    let base = "braid runs neural-network inference from many threads on one GPU at once";
    (0..32).map(|i| format!("{i}: {}", base.repeat(1 + i % 5))).collect()
}

impl MiniLmBench {
    pub fn new(device: &Device, dir: &str, dtype: braid_runtime::DType, mixed: bool) -> Result<Self> {
        let model = SentenceEmbedder::load_with(dir, device, dtype)?;
        let b = MiniLmBench { model: Arc::new(model), mixed };
        if mixed {
            for n in b.batches() {
                let x = b.input(n, 0)?;
                let tokens: usize = (0..x.batch).map(|i| x.row_len(i)).sum();
                eprintln!("mixed set, batch {n}: {tokens} tokens, mean {:.1} a text, padded to {} ({:.0}% padding)", tokens as f64 / n as f64, x.seq, 100.0 * (1.0 - tokens as f64 / (x.batch * x.seq) as f64));
            }
        }
        Ok(b)
    }
}

impl Bench for MiniLmBench {
    type Input = BertInput;
    type Output = Tensor;
    fn name(&self) -> &'static str {
        if self.mixed {
            "mixed"
        } else {
            "minilm"
        }
    }
    fn batches(&self) -> Vec<usize> {
        if self.mixed {
            vec![32, 128, 512]
        } else {
            vec![1, 8, 32, 128, 512]
        }
    }
    fn input(&self, batch: usize, seed: u64) -> Result<BertInput> {
        if self.mixed {
            // The first `batch` rows of the shared set (the seed is not used:
            // both sides time the same texts).
            let ends = self.model.tokenizer().encode("")?;
            let (cls, sep) = (ends.first().copied().unwrap_or(101), ends.last().copied().unwrap_or(102));
            return Ok(BertInput::from_rows(&mixed_rows(batch, cls, sep, self.model.max_seq_length()), self.model.tokenizer().pad_id()));
        }
        // Sequence length 128: the model's start token + 126 ids + its end
        // token ([CLS] 101 ... [SEP] 102 for MiniLM), ids drawn from
        // 1000..21000 (or the whole vocabulary of a smaller model).
        let mut rng = braid_nn::Rng::new(seed ^ 0x7e57);
        let ends = self.model.tokenizer().encode("")?;
        let vocab = self.model.encoder().vocab_size() as u64;
        let (lo, span) = if vocab >= 21_000 { (1000, 20_000) } else { (0, vocab) };
        let body = 128usize.min(self.model.max_seq_length()).saturating_sub(ends.len());
        let rows: Vec<Vec<u32>> = (0..batch)
            .map(|_| {
                let mut r = ends[..ends.len().min(1)].to_vec();
                r.extend((0..body).map(|_| (lo + rng.next_u64() % span) as u32));
                r.extend_from_slice(&ends[ends.len().min(1)..]);
                r
            })
            .collect();
        Ok(BertInput::from_rows(&rows, self.model.tokenizer().pad_id()))
    }
    fn forward(&self, x: &BertInput) -> Result<Tensor> {
        self.model.embed_input(x)
    }
    fn correctness(&self) -> Result<Vec<(String, f64)>> {
        if self.model.dir().join("reference.json").is_file() {
            let r = braid_nn::reference::check_model_dir(self.model.dir(), self.model.encoder().device())?;
            return Ok(vec![(format!("{} vs its python reference ({} rows; worst cosine {:.9}), max abs diff", self.model.dir().display(), r.rows, r.worst_cosine), r.max_abs)]);
        }
        let fixture: serde_json::Value = serde_json::from_str(FIXTURE).map_err(|e| braid_runtime::Error::Io { path: "minilm_reference.json".into(), message: e.to_string() })?;
        let mut out = Vec::new();
        let mut reference = Vec::new();
        let mut n = 0;
        for batch in fixture["batches"].as_array().into_iter().flatten() {
            let texts: Vec<&str> = batch["sentences"].as_array().into_iter().flatten().filter_map(|t| t.as_str()).collect();
            for e in self.model.embed(&texts)? {
                out.extend(e);
            }
            for e in batch["embeddings"].as_array().into_iter().flatten() {
                reference.extend(e.as_array().into_iter().flatten().map(|v| v.as_f64().unwrap_or(f64::NAN)));
            }
            n += texts.len();
        }
        Ok(vec![(format!("minilm {} vs sentence-transformers f32 ({n} sentences)", self.model.encoder().dtype().name()), rel_err(&out, &reference))])
    }
    fn dynamic(all: &[Self], replicated: bool, clients: &[usize], seconds: f64) -> Result<Vec<Row>> {
        crate::dynamic::minilm(all, replicated, clients, seconds)
    }
    fn graphs(&self) -> bool {
        false
    }
}

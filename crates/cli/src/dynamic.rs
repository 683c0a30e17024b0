//! The "dynamic" rows of the story: `clients` threads each sending single
//! samples through braid-batch's dynamic [`Batcher`], for a fixed time;
//! requests/s, p50 and p99 latency, mean batch size. Over several devices
//! (`--device cuda:all`, `cpu:0,1`) the batcher feeds one replica per device
//! through `braid_batch::Replicas`, with one worker per device. The batch
//! policy is `eager` unless `BRAID_BATCH_POLICY=wait` (to compare the two
//! from one binary).

use crate::report::Row;
use crate::workloads::{EncoderBench, MiniLmBench, MlpBench};
use braid_batch::{BatchModel, BatchPolicy, Batcher, BatcherConfig, Replicas};
use braid_nn::{workloads as wl, Mlp, Tensor, TransformerEncoderLayer};
use braid_runtime::{Device, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest batch the dynamic batcher forms, and how long the oldest request
/// waits for company.
const MAX_BATCH: usize = 256;
const MAX_DELAY: Duration = Duration::from_millis(1);

/// The batch policy of the dynamic rows: `BRAID_BATCH_POLICY` (as for
/// `braid serve`), `eager` when unset.
pub fn policy() -> Result<BatchPolicy> {
    match std::env::var("BRAID_BATCH_POLICY") {
        Ok(v) => v.parse().map_err(|e| match e {
            braid_runtime::Error::InvalidArgument(m) => braid_runtime::Error::InvalidArgument(format!("BRAID_BATCH_POLICY: {m}")),
            e => e,
        }),
        Err(_) => Ok(BatchPolicy::Eager),
    }
}

/// Rows of `dim` floats in, rows out: the batcher's view of a dense model.
pub struct Dense<F> {
    pub device: Device,
    pub in_shape: Vec<usize>,
    pub forward: F,
}

impl<F> BatchModel for Dense<F>
where
    F: Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
{
    type Input = Vec<f32>;
    type Output = Vec<f32>;
    type Worker = ();
    fn worker(&self, _: usize) -> Result<()> {
        Ok(())
    }
    fn forward(&self, _: &mut (), inputs: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>> {
        let n = inputs.len();
        let mut shape = vec![n];
        shape.extend(&self.in_shape);
        let flat: Vec<f32> = inputs.concat();
        let out = (self.forward)(&Tensor::from_slice(&self.device, &flat, &shape)?)?.to_vec()?;
        let per = out.len() / n.max(1);
        Ok(out.chunks(per.max(1)).map(|c| c.to_vec()).collect())
    }
}

/// The rows for `models` (one per device; see the module docs).
fn over<M: BatchModel>(mut models: Vec<(String, M)>, replicated: bool, clients: &[usize], seconds: f64, sample: impl Fn(usize) -> M::Input + Sync) -> Result<Vec<Row>>
where
    M::Input: Clone,
{
    if replicated {
        let workers = models.len();
        measure(Arc::new(Replicas::new(models)?), workers, clients, seconds, sample)
    } else {
        let (_, m) = models.swap_remove(0);
        measure(Arc::new(m), 1, clients, seconds, sample)
    }
}

fn measure<M: BatchModel>(model: Arc<M>, workers: usize, clients: &[usize], seconds: f64, sample: impl Fn(usize) -> M::Input + Sync) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let policy = policy()?;
    for &n in clients {
        let batcher = Batcher::new(model.clone(), BatcherConfig { max_batch_size: MAX_BATCH, policy, max_queue_delay: MAX_DELAY, capacity: 1 << 16, workers, ..Default::default() })?;
        // Warm-up: one batch through the worker's stream.
        batcher.infer(sample(0))?;
        let end = Instant::now() + Duration::from_secs_f64(seconds);
        let t0 = Instant::now();
        let mut lat: Vec<f64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..n)
                .map(|c| {
                    let (batcher, sample) = (&batcher, &sample);
                    s.spawn(move || -> Result<Vec<f64>> {
                        let mut mine = Vec::new();
                        while Instant::now() < end {
                            let x = sample(c);
                            let t = Instant::now();
                            batcher.infer(x)?;
                            mine.push(t.elapsed().as_secs_f64() * 1e3);
                        }
                        Ok(mine)
                    })
                })
                .collect();
            let mut all = Vec::new();
            for h in hs {
                all.extend(h.join().map_err(|p| braid_runtime::Error::JobPanicked(braid_runtime::panic_message(&p)))??);
            }
            Ok::<_, braid_runtime::Error>(all)
        })?;
        let dt = t0.elapsed().as_secs_f64();
        let stats = batcher.stats();
        batcher.shutdown();
        lat.sort_by(|a, b| a.total_cmp(b));
        if lat.is_empty() {
            continue;
        }
        let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
        rows.push(Row::Dynamic { clients: n, requests_per_s: lat.len() as f64 / dt, p50_ms: pct(0.5), p99_ms: pct(0.99), mean_batch: stats.mean_batch_size });
    }
    Ok(rows)
}

pub fn mlp(all: &[MlpBench], replicated: bool, clients: &[usize], seconds: f64) -> Result<Vec<Row>> {
    let models = all
        .iter()
        .map(|b| {
            let m: Arc<Mlp> = b.model.clone();
            (b.device.label().to_string(), Dense { device: b.device.clone(), in_shape: vec![wl::MLP_DIMS[0]], forward: move |x: &Tensor| m.forward(x) })
        })
        .collect();
    let inputs: Vec<Vec<f32>> = (0..16).map(|i| wl::mlp_input(1, i)).collect();
    over(models, replicated, clients, seconds, |c| inputs[c % inputs.len()].clone())
}

pub fn encoder(all: &[EncoderBench], replicated: bool, clients: &[usize], seconds: f64) -> Result<Vec<Row>> {
    let models = all
        .iter()
        .map(|b| {
            let m: Arc<TransformerEncoderLayer> = b.model.clone();
            (b.device.label().to_string(), Dense { device: b.device.clone(), in_shape: vec![wl::ENCODER_SEQ, wl::ENCODER_DIM], forward: move |x: &Tensor| m.forward(x, None) })
        })
        .collect();
    let inputs: Vec<Vec<f32>> = (0..16).map(|i| wl::encoder_input(1, i)).collect();
    over(models, replicated, clients, seconds, |c| inputs[c % inputs.len()].clone())
}

pub fn minilm(all: &[MiniLmBench], replicated: bool, clients: &[usize], seconds: f64) -> Result<Vec<Row>> {
    let models = all.iter().map(|b| (format!("replica {}", b.model.dir().display()), braid_serve::TokenEmbedder(b.model.clone()))).collect();
    let texts = crate::workloads::sample_texts();
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| all[0].model.tokenizer().encode(t)).collect::<Result<_>>()?;
    over(models, replicated, clients, seconds, |c| ids[c % ids.len()].clone())
}

//! The "dynamic" rows of the story: `clients` threads each sending single
//! samples through braid-batch's dynamic [`Batcher`], for a fixed time;
//! requests/s, p50 and p99 latency, mean batch size.

use crate::report::Row;
use crate::workloads::{EncoderBench, MiniLmBench, MlpBench};
use braid_batch::{BatchModel, Batcher, BatcherConfig};
use braid_nn::{workloads as wl, Mlp, Tensor, TransformerEncoderLayer};
use braid_runtime::{Device, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest batch the dynamic batcher forms, and how long the oldest request
/// waits for company.
const MAX_BATCH: usize = 256;
const MAX_DELAY: Duration = Duration::from_millis(1);

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

fn measure<M: BatchModel>(model: Arc<M>, clients: &[usize], seconds: f64, sample: impl Fn(usize) -> M::Input + Sync) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &n in clients {
        let batcher = Batcher::new(model.clone(), BatcherConfig { max_batch_size: MAX_BATCH, max_queue_delay: MAX_DELAY, capacity: 1 << 16, ..Default::default() })?;
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

pub fn mlp(b: &MlpBench, clients: &[usize], seconds: f64) -> Result<Vec<Row>> {
    let m: Arc<Mlp> = b.model.clone();
    let model = Arc::new(Dense { device: b.device.clone(), in_shape: vec![wl::MLP_DIMS[0]], forward: move |x: &Tensor| m.forward(x) });
    let inputs: Vec<Vec<f32>> = (0..16).map(|i| wl::mlp_input(1, i)).collect();
    measure(model, clients, seconds, |c| inputs[c % inputs.len()].clone())
}

pub fn encoder(b: &EncoderBench, clients: &[usize], seconds: f64) -> Result<Vec<Row>> {
    let m: Arc<TransformerEncoderLayer> = b.model.clone();
    let model = Arc::new(Dense { device: b.device.clone(), in_shape: vec![wl::ENCODER_SEQ, wl::ENCODER_DIM], forward: move |x: &Tensor| m.forward(x, None) });
    let inputs: Vec<Vec<f32>> = (0..16).map(|i| wl::encoder_input(1, i)).collect();
    measure(model, clients, seconds, |c| inputs[c % inputs.len()].clone())
}

pub fn minilm(b: &MiniLmBench, clients: &[usize], seconds: f64) -> Result<Vec<Row>> {
    let model = Arc::new(braid_serve::TokenEmbedder(b.model.clone()));
    let texts = crate::workloads::sample_texts();
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| b.model.tokenizer().encode(t)).collect::<Result<_>>()?;
    measure(model, clients, seconds, |c| ids[c % ids.len()].clone())
}

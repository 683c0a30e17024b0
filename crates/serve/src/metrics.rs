//! The server's Prometheus metrics (the `prometheus-client` crate, text
//! exposition format at `GET /metrics`). Owns every metric's name, type and
//! buckets, and refreshing the batcher's and the allocator's figures at
//! scrape time:
//!
//! - `braid_requests_total{route, method, status}` (counter);
//! - histograms: `braid_request_duration_seconds{route}`,
//!   `braid_tokenization_seconds`, `braid_queue_wait_seconds` (per text),
//!   `braid_inference_seconds` (per batch forward), `braid_batch_size_texts`,
//!   `braid_batch_size_tokens` (padded: texts × longest);
//! - `braid_queue_depth`, `braid_allocator_allocated_bytes`,
//!   `braid_allocator_reserved_bytes` (gauges);
//! - `braid_texts_submitted_total`, `braid_texts_completed_total`,
//!   `braid_texts_cancelled_total`, `braid_texts_rejected_total`,
//!   `braid_texts_timed_out_total`, `braid_batches_total` (counters mirrored
//!   from the batcher's own counters at each scrape);
//! - per device (`{device="cuda:0 (#1)"}`, one series per replica with
//!   `--device cuda:all`): `braid_device_serving` (1 in rotation, 0 out),
//!   `braid_device_batches` (counter), `braid_device_allocator_reserved_bytes`.

use braid_batch::BatcherStats;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Mutex;

type Labels = Vec<(String, String)>;

/// Every metric, registered once.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<Labels, Counter>,
    duration: Family<Labels, Histogram>,
    pub(crate) tokenization: Histogram,
    pub(crate) queue_wait: Histogram,
    pub(crate) inference: Histogram,
    pub(crate) batch_texts: Histogram,
    pub(crate) batch_tokens: Histogram,
    queue_depth: Gauge,
    allocated: Gauge,
    reserved: Gauge,
    submitted: Counter,
    completed: Counter,
    cancelled: Counter,
    rejected: Counter,
    timed_out: Counter,
    batches: Counter,
    device_serving: Family<Labels, Gauge>,
    device_batches: Family<Labels, Counter>,
    device_reserved: Family<Labels, Gauge>,
}

/// What `render` reports per device: label, in rotation, batches run,
/// allocator reserved bytes.
pub struct DeviceFigures {
    pub label: String,
    pub serving: bool,
    pub batches: u64,
    pub reserved: usize,
}

fn seconds() -> Histogram {
    // 50 µs .. ~52 s.
    Histogram::new(exponential_buckets(5e-5, 2.0, 21))
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            requests: Family::default(),
            duration: Family::new_with_constructor(seconds),
            tokenization: seconds(),
            queue_wait: seconds(),
            inference: seconds(),
            batch_texts: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            batch_tokens: Histogram::new(exponential_buckets(16.0, 2.0, 14)),
            queue_depth: Gauge::default(),
            allocated: Gauge::default(),
            reserved: Gauge::default(),
            submitted: Counter::default(),
            completed: Counter::default(),
            cancelled: Counter::default(),
            rejected: Counter::default(),
            timed_out: Counter::default(),
            batches: Counter::default(),
            device_serving: Family::default(),
            device_batches: Family::default(),
            device_reserved: Family::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|p| p.into_inner());
            r.register("braid_requests", "HTTP requests by route, method and status", m.requests.clone());
            r.register("braid_request_duration_seconds", "HTTP request duration by route", m.duration.clone());
            r.register("braid_tokenization_seconds", "Tokenization time per request", m.tokenization.clone());
            r.register("braid_queue_wait_seconds", "Time a text waited in the batcher's queue", m.queue_wait.clone());
            r.register("braid_inference_seconds", "Forward time per batch", m.inference.clone());
            r.register("braid_batch_size_texts", "Texts per batch", m.batch_texts.clone());
            r.register("braid_batch_size_tokens", "Tokens per batch (texts x longest, as padded)", m.batch_tokens.clone());
            r.register("braid_queue_depth", "Texts waiting in the batcher now", m.queue_depth.clone());
            r.register("braid_allocator_allocated_bytes", "Device bytes in live blocks (caching allocator)", m.allocated.clone());
            r.register("braid_allocator_reserved_bytes", "Device bytes held from the backend (caching allocator)", m.reserved.clone());
            r.register("braid_texts_submitted", "Texts accepted by the batcher", m.submitted.clone());
            r.register("braid_texts_completed", "Texts answered by the batcher (computed, failed or timed out)", m.completed.clone());
            r.register("braid_texts_cancelled", "Texts whose client went away before their batch started (never computed)", m.cancelled.clone());
            r.register("braid_texts_rejected", "Texts refused because the queue was full (429)", m.rejected.clone());
            r.register("braid_texts_timed_out", "Texts whose deadline passed before their batch started (504)", m.timed_out.clone());
            r.register("braid_batches", "Forwards run by the batcher", m.batches.clone());
            r.register("braid_device_serving", "1 while the device is in rotation, 0 once it was taken out", m.device_serving.clone());
            r.register("braid_device_batches", "Forwards run on the device", m.device_batches.clone());
            r.register("braid_device_allocator_reserved_bytes", "Device bytes held from the backend, per device", m.device_reserved.clone());
        }
        m
    }

    /// One finished HTTP request.
    pub fn request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let l = |extra: &[(&str, String)]| -> Labels { std::iter::once(("route".to_string(), route.to_string())).chain(extra.iter().map(|(k, v)| (k.to_string(), v.clone()))).collect() };
        self.requests.get_or_create(&l(&[("method", method.to_string()), ("status", status.to_string())])).inc();
        self.duration.get_or_create(&l(&[])).observe(seconds);
    }

    /// The text exposition, with the batcher's and allocator's figures as of now.
    pub fn render(&self, s: &BatcherStats, alloc: Option<(usize, usize)>, devices: &[DeviceFigures]) -> String {
        let reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Under the registry lock, so two scrapes never both add a delta.
        let mirror = |c: &Counter, v: u64| {
            c.inc_by(v.saturating_sub(c.get()));
        };
        mirror(&self.submitted, s.submitted);
        mirror(&self.completed, s.completed);
        mirror(&self.cancelled, s.cancelled);
        mirror(&self.rejected, s.rejected);
        mirror(&self.timed_out, s.timed_out);
        mirror(&self.batches, s.batches);
        self.queue_depth.set(s.queue_depth as i64);
        if let Some((a, r)) = alloc {
            self.allocated.set(a as i64);
            self.reserved.set(r as i64);
        }
        for d in devices {
            let l: Labels = vec![("device".to_string(), d.label.clone())];
            self.device_serving.get_or_create(&l).set(d.serving as i64);
            let c = self.device_batches.get_or_create(&l);
            mirror(&c, d.batches);
            self.device_reserved.get_or_create(&l).set(d.reserved as i64);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

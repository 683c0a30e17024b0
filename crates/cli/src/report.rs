//! The JSON report shared by `braid bench story` and the PyTorch peer
//! (`bench/peers/torch_story.py`), as DESIGN.md's "JSON report" gives it.
//! Owns its (de)serialisation and the rows' identity for comparison.

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Report {
    pub tool: String,
    pub device: String,
    pub backend: String,
    pub workload: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    #[serde(default)]
    pub quick: bool,
    /// Devices the dynamic rows ran over, where that was a replicated list
    /// (`--device cuda:all`, `cpu:0,1`); absent for a single device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic_devices: Option<Vec<String>>,
    pub results: Vec<Row>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Row {
    Correctness { name: String, max_rel_err: f64 },
    Threads { threads: usize, mode: String, ops_per_s: f64 },
    Batching { batch: usize, latency_ms: f64, samples_per_s: f64 },
    Sync { pattern: String, threads: usize, ops_per_s: f64 },
    Pipeline { depth: usize, ops_per_s: f64 },
    Dynamic { clients: usize, requests_per_s: f64, p50_ms: f64, p99_ms: f64, mean_batch: f64 },
}

impl Row {
    /// Section name, for grouping.
    pub fn section(&self) -> &'static str {
        match self {
            Row::Correctness { .. } => "correctness",
            Row::Threads { .. } => "threads",
            Row::Batching { .. } => "batching",
            Row::Sync { .. } => "sync",
            Row::Pipeline { .. } => "pipeline",
            Row::Dynamic { .. } => "dynamic",
        }
    }

    /// What identifies the row within its section (to pair braid's row with the peer's).
    pub fn key(&self) -> String {
        match self {
            Row::Correctness { name, .. } => name.clone(),
            Row::Threads { threads, mode, .. } => format!("{mode} x{threads}"),
            Row::Batching { batch, .. } => format!("batch {batch}"),
            Row::Sync { pattern, threads, .. } => format!("{pattern} x{threads}"),
            Row::Pipeline { depth, .. } => format!("depth {depth}"),
            Row::Dynamic { clients, .. } => format!("{clients} clients"),
        }
    }

    /// The headline figure and whether higher is better.
    pub fn headline(&self) -> (f64, &'static str, bool) {
        match self {
            Row::Correctness { max_rel_err, .. } => (*max_rel_err, "rel err", false),
            Row::Threads { ops_per_s, .. } | Row::Sync { ops_per_s, .. } | Row::Pipeline { ops_per_s, .. } => (*ops_per_s, "ops/s", true),
            Row::Batching { samples_per_s, .. } => (*samples_per_s, "samples/s", true),
            Row::Dynamic { requests_per_s, .. } => (*requests_per_s, "req/s", true),
        }
    }
}

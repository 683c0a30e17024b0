//! The "dynamic" rows of the story: clients each sending single samples
//! through braid-batch's dynamic batcher.

use crate::report::Row;
use crate::workloads::{EncoderBench, MlpBench};
use braid_runtime::Result;

pub fn mlp(_b: &MlpBench, _clients: &[usize], _seconds: f64) -> Result<Vec<Row>> {
    Ok(Vec::new())
}

pub fn encoder(_b: &EncoderBench, _clients: &[usize], _seconds: f64) -> Result<Vec<Row>> {
    Ok(Vec::new())
}

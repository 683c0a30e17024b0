//! `softmax` over the last dimension.

use crate::tensor::Tensor;
use braid_runtime::Result;

/// Softmax of each row (last dimension).
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let stream = Tensor::prepare(x.device(), &[x])?;
    let out = Tensor::empty_on(x.device(), &stream, x.shape(), x.dtype())?;
    let d = x.last_dim();
    let rows = x.numel() / d.max(1);
    if rows > 0 && d > 0 {
        stream.softmax(x.view(), out.view(), rows, d, x.dtype())?;
    }
    Ok(out)
}

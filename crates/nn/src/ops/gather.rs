//! `embedding`: rows of a table gathered by token ids (checked on the host).

use crate::tensor::{shape_err, Tensor};
use braid_runtime::{Error, Result};

/// `table[ids[i], :]` for each id: `table` is `[rows, dim]`, the result is
/// `[ids.len(), dim]`. An id `>= rows` is an error naming it.
pub fn embedding(table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    if table.dims() != 2 {
        return Err(shape_err("embedding", format!("table {:?} must be [rows, dim]", table.shape())));
    }
    let (rows, dim) = (table.shape()[0], table.shape()[1]);
    if let Some((i, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= rows) {
        return Err(Error::InvalidArgument(format!("embedding: id {id} at position {i} is out of range for a table of {rows} rows {:?}", table.shape())));
    }
    let device = table.device();
    let stream = Tensor::prepare(device, &[table])?;
    let out = Tensor::empty_on(device, &stream, &[ids.len(), dim], table.dtype())?;
    stream.gather(device, table.view(), rows, ids, out.view(), dim, table.dtype())?;
    Ok(out)
}

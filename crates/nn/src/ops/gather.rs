//! `embedding`: rows of a table gathered by token ids (checked on the host).

use crate::tensor::{shape_err, Tensor};
use braid_runtime::{backend::Gather, Error, Result};

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
    if !ids.is_empty() && dim > 0 {
        let id_block = device.alloc(ids.len() * 4, &stream)?;
        let bytes: Vec<u8> = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
        // SAFETY: `id_block` holds ids.len() u32s, was made on this stream and
        // is freed stream-ordered (after the gather); `h2d` stages `bytes`.
        // Every id is < rows (checked above), so the table reads are in
        // bounds; out holds ids.len()*dim elements.
        unsafe {
            stream.raw().h2d(&bytes, id_block.ptr())?;
            stream.raw().gather(&Gather { table: table.ptr(), ids: id_block.ptr(), out: out.ptr(), n: ids.len(), dim, dtype: table.dtype() })?;
        }
    }
    Ok(out)
}

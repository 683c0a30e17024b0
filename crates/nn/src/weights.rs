//! [`HostWeights`]: named f32 tensors on the host, the one form every
//! module loads from: a safetensors file (HF checkpoints; f32, f16 and bf16
//! are widened to f32), or weights made from a seed by the built-in
//! workloads. Owns the checks of a weights file (a missing tensor, a wrong
//! shape or a non-float dtype is an error naming the tensor; a truncated or
//! corrupt file is an error, never a crash) and writing safetensors, so the
//! PyTorch peer can load exactly the weights braid runs.

use crate::tensor::{numel, Tensor};
use braid_runtime::{DType, Device, Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// One host tensor: row-major f32 data and its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Named host tensors, with the name of where they came from for errors.
#[derive(Clone, Debug, Default)]
pub struct HostWeights {
    origin: String,
    tensors: BTreeMap<String, HostTensor>,
    /// Tensors present in the file with a dtype that is not a float (name -> dtype).
    other: BTreeMap<String, String>,
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // subnormal: normalise
            let mut e = 127 - 15 + 1;
            let mut m = m;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | ((e as u32) << 23) | ((m & 0x3ff) << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

impl HostWeights {
    pub fn new(origin: impl Into<String>) -> HostWeights {
        HostWeights { origin: origin.into(), ..Default::default() }
    }

    /// Where the weights came from (a path, or a workload's name and seed).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Add (or replace) a tensor. `data` must fill `shape`.
    pub fn insert(&mut self, name: impl Into<String>, shape: &[usize], data: Vec<f32>) -> Result<()> {
        let name = name.into();
        if numel(shape) != data.len() {
            return Err(Error::Model(format!("{}: tensor {name}: {} values do not fill shape {shape:?}", self.origin, data.len())));
        }
        self.tensors.insert(name, HostTensor { shape: shape.to_vec(), data });
        Ok(())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensor `name`, which must have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<&HostTensor> {
        match self.tensors.get(name) {
            Some(t) if t.shape == shape => Ok(t),
            Some(t) => Err(Error::Model(format!("{}: tensor {name} has shape {:?}, expected {shape:?}", self.origin, t.shape))),
            None => match self.other.get(name) {
                Some(dt) => Err(Error::Model(format!("{}: tensor {name} has dtype {dt}, expected a float type (F32, F16 or BF16)", self.origin))),
                None => Err(Error::Model(format!("{}: tensor {name} is missing", self.origin))),
            },
        }
    }

    /// The tensor `name`, whatever its shape.
    pub fn get_any(&self, name: &str) -> Result<&HostTensor> {
        match self.tensors.get(name) {
            Some(t) => Ok(t),
            None => self.get(name, &[]),
        }
    }

    /// The tensor `name` (of `shape`) on `device` as `dtype`.
    pub fn tensor(&self, name: &str, shape: &[usize], device: &Device, dtype: DType) -> Result<Tensor> {
        let t = self.get(name, shape)?;
        Tensor::from_slice_as(device, &t.data, shape, dtype)
    }

    /// Parse a safetensors image. Float tensors are widened to f32; others
    /// are remembered by dtype so that asking for them names the dtype.
    pub fn from_safetensors(bytes: &[u8], origin: impl Into<String>) -> Result<HostWeights> {
        use safetensors::tensor::Dtype;
        let origin = origin.into();
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| Error::Io { path: origin.clone(), message: format!("not a valid safetensors file: {e}") })?;
        let mut w = HostWeights::new(origin);
        for (name, view) in st.tensors() {
            let shape = view.shape().to_vec();
            let raw = view.data();
            let data: Vec<f32> = match view.dtype() {
                Dtype::F32 => raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                Dtype::BF16 => raw.chunks_exact(2).map(|c| crate::tensor::bf16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
                Dtype::F16 => raw.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
                other => {
                    w.other.insert(name, format!("{other:?}"));
                    continue;
                }
            };
            w.insert(name, &shape, data)?;
        }
        Ok(w)
    }

    /// Read a safetensors file.
    pub fn load_safetensors(path: impl AsRef<Path>) -> Result<HostWeights> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::Io { path: path.display().to_string(), message: e.to_string() })?;
        HostWeights::from_safetensors(&bytes, path.display().to_string())
    }

    /// The weights as a safetensors image (all F32), e.g. for PyTorch's
    /// `safetensors.torch.load_file` + `load_state_dict`.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        use safetensors::tensor::{Dtype, TensorView};
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> =
            self.tensors.iter().map(|(n, t)| (n.clone(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect(), t.shape.clone())).collect();
        let views = bytes
            .iter()
            .map(|(n, b, s)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (n.clone(), v)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Model(format!("{}: {e}", self.origin)))?;
        safetensors::serialize(views, None).map_err(|e| Error::Model(format!("{}: {e}", self.origin)))
    }

    /// Write the weights as a safetensors file.
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_safetensors()?).map_err(|e| Error::Io { path: path.display().to_string(), message: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn f16() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert!(f16_to_f32(0x7e00).is_nan());
    }
}

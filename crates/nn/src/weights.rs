//! [`HostWeights`]: named tensors on the host, the one form every module
//! loads from: a safetensors file (HF checkpoints; f32, f16 and bf16), or
//! weights made from a seed by the built-in workloads. Owns the checks of a
//! weights file (a missing tensor, a wrong shape or a non-float dtype is an
//! error naming the tensor; a truncated or corrupt file is an error, never a
//! crash) and writing safetensors, so the PyTorch peer can load exactly the
//! weights braid runs.
//!
//! A file is memory-mapped and its tensors are *views* into the map: nothing
//! is copied when the file is opened, an f32 tensor is handed to the upload
//! straight from the mapped pages, and an f16/bf16 one is widened only for
//! the moment it is uploaded. Models that rename or regroup tensors do it
//! with [`HostWeights::alias`], which shares the view instead of copying the
//! data; only genuinely new tensors (a fused QKV weight) are built.

use crate::tensor::{numel, Tensor};
use braid_runtime::{DType, Device, Error, Result};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// One host tensor as a caller sees it: its shape and row-major f32 values,
/// borrowed from the mapped file where the file stores f32, widened
/// otherwise.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor<'a> {
    pub shape: Vec<usize>,
    pub data: Cow<'a, [f32]>,
}

/// The bytes a set of views points into: a memory-mapped file, or an image
/// held in memory (`from_safetensors` on a buffer).
enum Image {
    Mapped(braid_runtime::MappedFile),
    Owned(Vec<u8>),
}

impl Image {
    fn bytes(&self) -> &[u8] {
        match self {
            Image::Mapped(m) => m.bytes(),
            Image::Owned(v) => v,
        }
    }
}

/// How a file stores a float tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
enum FileDType {
    F32,
    F16,
    BF16,
}

/// Where a tensor's values live.
#[derive(Clone)]
enum Data {
    /// `image.bytes()[start..end]`, in the file's dtype (little-endian).
    View { image: Arc<Image>, start: usize, end: usize, dtype: FileDType },
    /// Values made in memory (workloads, fused tensors).
    Owned(Arc<Vec<f32>>),
}

#[derive(Clone)]
struct Entry {
    shape: Vec<usize>,
    data: Data,
}

impl Entry {
    fn values(&self) -> Cow<'_, [f32]> {
        match &self.data {
            Data::Owned(v) => Cow::Borrowed(v.as_slice()),
            Data::View { image, start, end, dtype } => {
                let raw = &image.bytes()[*start..*end];
                match dtype {
                    FileDType::F32 => {
                        // Zero-copy where the view is aligned for f32 (safetensors
                        // pads its header to 8 bytes, so it normally is) and the
                        // host is little-endian like the file format.
                        if cfg!(target_endian = "little") {
                            if let Ok(v) = bytemuck::try_cast_slice::<u8, f32>(raw) {
                                return Cow::Borrowed(v);
                            }
                        }
                        Cow::Owned(raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
                    }
                    FileDType::BF16 => Cow::Owned(raw.chunks_exact(2).map(|c| crate::tensor::bf16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect()),
                    FileDType::F16 => Cow::Owned(raw.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect()),
                }
            }
        }
    }
}

/// Named host tensors, with the name of where they came from for errors.
#[derive(Clone, Default)]
pub struct HostWeights {
    origin: String,
    tensors: BTreeMap<String, Entry>,
    /// Tensors present in the file with a dtype that is not a float (name -> dtype).
    other: BTreeMap<String, String>,
}

impl std::fmt::Debug for HostWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostWeights").field("origin", &self.origin).field("tensors", &self.tensors.len()).finish()
    }
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
        self.tensors.insert(name, Entry { shape: shape.to_vec(), data: Data::Owned(Arc::new(data)) });
        Ok(())
    }

    /// Make `from`'s tensor `name` (which must have `shape`) available here
    /// as `to`, sharing its data: a rename, not a copy.
    pub fn alias(&mut self, to: impl Into<String>, from: &HostWeights, name: &str, shape: &[usize]) -> Result<()> {
        from.get(name, shape)?;
        let e = from.tensors.get(name).expect("checked by get").clone();
        self.tensors.insert(to.into(), e);
        Ok(())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensor `name`, which must have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<HostTensor<'_>> {
        match self.tensors.get(name) {
            Some(t) if t.shape == shape => Ok(HostTensor { shape: t.shape.clone(), data: t.values() }),
            Some(t) => Err(Error::Model(format!("{}: tensor {name} has shape {:?}, expected {shape:?}", self.origin, t.shape))),
            None => match self.other.get(name) {
                Some(dt) => Err(Error::Model(format!("{}: tensor {name} has dtype {dt}, expected a float type (F32, F16 or BF16)", self.origin))),
                None => Err(Error::Model(format!("{}: tensor {name} is missing", self.origin))),
            },
        }
    }

    /// The shape of tensor `name`, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.shape.as_slice())
    }

    /// The tensor `name`, whatever its shape.
    pub fn get_any(&self, name: &str) -> Result<HostTensor<'_>> {
        match self.tensors.get(name) {
            Some(t) => Ok(HostTensor { shape: t.shape.clone(), data: t.values() }),
            None => self.get(name, &[]),
        }
    }

    /// The tensor `name` (of `shape`) on `device` as `dtype`. An f32 file
    /// tensor goes to the device straight from the mapped pages.
    pub fn tensor(&self, name: &str, shape: &[usize], device: &Device, dtype: DType) -> Result<Tensor> {
        let t = self.get(name, shape)?;
        Tensor::from_slice_as(device, &t.data, shape, dtype)
    }

    /// Index a safetensors image: each float tensor becomes a view into
    /// `image`; others are remembered by dtype so that asking for them names
    /// the dtype.
    fn index(image: Image, origin: String) -> Result<HostWeights> {
        use safetensors::tensor::Dtype;
        let image = Arc::new(image);
        let (header, meta) = safetensors::SafeTensors::read_metadata(image.bytes()).map_err(|e| Error::Io { path: origin.clone(), message: format!("not a valid safetensors file: {e}") })?;
        // Validate the whole image (offsets inside the file, no overlaps, sizes
        // matching shapes) with the crate's own checks before trusting offsets.
        safetensors::SafeTensors::deserialize(image.bytes()).map_err(|e| Error::Io { path: origin.clone(), message: format!("not a valid safetensors file: {e}") })?;
        let base = 8 + header;
        let mut w = HostWeights::new(origin);
        for (name, info) in meta.tensors() {
            let dtype = match info.dtype {
                Dtype::F32 => FileDType::F32,
                Dtype::F16 => FileDType::F16,
                Dtype::BF16 => FileDType::BF16,
                other => {
                    w.other.insert(name, format!("{other:?}"));
                    continue;
                }
            };
            let (start, end) = (base + info.data_offsets.0, base + info.data_offsets.1);
            let elem = if dtype == FileDType::F32 { 4 } else { 2 };
            if end > image.bytes().len() || start > end || (end - start) != numel(&info.shape) * elem {
                return Err(Error::Io { path: w.origin.clone(), message: format!("tensor {name}: its data range does not match its shape") });
            }
            w.tensors.insert(name, Entry { shape: info.shape.clone(), data: Data::View { image: image.clone(), start, end, dtype } });
        }
        Ok(w)
    }

    /// Parse a safetensors image held in memory.
    pub fn from_safetensors(bytes: &[u8], origin: impl Into<String>) -> Result<HostWeights> {
        HostWeights::index(Image::Owned(bytes.to_vec()), origin.into())
    }

    /// Open a safetensors file: memory-mapped, nothing read until a tensor
    /// is asked for.
    pub fn load_safetensors(path: impl AsRef<Path>) -> Result<HostWeights> {
        let path = path.as_ref();
        let image = Image::Mapped(braid_runtime::MappedFile::open(path)?);
        HostWeights::index(image, path.display().to_string())
    }

    /// The weights as a safetensors image (all F32), e.g. for PyTorch's
    /// `safetensors.torch.load_file` + `load_state_dict`.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        use safetensors::tensor::{Dtype, TensorView};
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> =
            self.tensors.iter().map(|(n, t)| (n.clone(), t.values().iter().flat_map(|v| v.to_le_bytes()).collect(), t.shape.clone())).collect();
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

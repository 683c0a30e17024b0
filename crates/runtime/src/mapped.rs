//! [`MappedFile`]: a read-only memory map of a file (model weights), the one
//! place braid maps files, so that crates above the runtime keep no `unsafe`.
//! A file system that cannot map (some FUSE and network mounts) gets the file
//! read into memory instead; callers see bytes either way.

use crate::error::{Error, Result};
use std::path::Path;

/// The bytes of a file: mapped read-only where the file system allows,
/// read into memory otherwise.
pub struct MappedFile {
    inner: Inner,
}

enum Inner {
    Mapped(memmap2::Mmap),
    Read(Vec<u8>),
}

impl MappedFile {
    /// Map `path` read-only (or read it, see the module docs).
    pub fn open(path: impl AsRef<Path>) -> Result<MappedFile> {
        let path = path.as_ref();
        let io = |e: std::io::Error| Error::Io { path: path.display().to_string(), message: e.to_string() };
        let file = std::fs::File::open(path).map_err(io)?;
        if file.metadata().map_err(io)?.len() == 0 {
            // Mapping an empty file is an error on some systems; nothing to map.
            return Ok(MappedFile { inner: Inner::Read(Vec::new()) });
        }
        // SAFETY: the map is read-only and is owned by this value, so every
        // slice handed out by `bytes` lives no longer than the map. What no
        // process-local invariant can rule out is another process truncating
        // or rewriting the file while it is mapped, which would change (or, on
        // truncation, unmap) the bytes under us; this is the contract of every
        // mmap-based weights loader (safetensors' own, candle's), and braid's
        // README asks that a model directory be left alone while it is loaded.
        let inner = match unsafe { memmap2::Mmap::map(&file) } {
            Ok(m) => Inner::Mapped(m),
            Err(_) => Inner::Read(std::fs::read(path).map_err(io)?),
        };
        Ok(MappedFile { inner })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.inner {
            Inner::Mapped(m) => m,
            Inner::Read(v) => v,
        }
    }

    /// Whether the bytes are a memory map (false: read into memory).
    pub fn is_mapped(&self) -> bool {
        matches!(self.inner, Inner::Mapped(_))
    }
}

//! [`Storage`]: the device memory behind one or more tensors. It is the
//! runtime's [`braid_runtime::Buffer`], which owns the rules that make it
//! safe to read from any stream of the device (home stream, settling, the
//! `record_stream` on drop; see `braid_runtime::buffer`), so that the safe op
//! layer (`braid_runtime::ops`) can enforce them and this crate needs no
//! `unsafe`.

pub use braid_runtime::Buffer as Storage;

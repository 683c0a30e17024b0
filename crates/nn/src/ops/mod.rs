//! The ops: each checks shapes and dtypes (a mismatch is `Error::Shape`
//! naming both shapes, never a panic), allocates its output on the calling
//! thread's current stream and enqueues one backend kernel there. Owns only
//! that glue; the arithmetic is each backend's (see
//! `braid_runtime::backend`), and its f64 reference is in
//! [`crate::reference`].

mod attention;
mod elementwise;
mod gather;
mod linear;
mod norm;
mod pool;
mod rope;
mod softmax;

pub use attention::{attention, attention_packed, attention_packed_bias, attention_varlen};
pub use elementwise::{activation, add, gelu, gelu_tanh, relu};
pub use gather::embedding;
pub use linear::{linear, matmul};
pub use norm::{l2_normalize, layer_norm};
pub use pool::{mean_pool, segment_mean_pool};
pub use rope::{glu, rope_qkv};
pub use softmax::softmax;
pub use braid_runtime::Activation;

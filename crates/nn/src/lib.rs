//! braid-nn: row-major [`Tensor`]s on a device, the [`ops`] over them, the
//! [`modules`] built from ops (Linear, LayerNorm, Mlp, MultiheadAttention,
//! TransformerEncoderLayer, BertModel), weights from safetensors, the
//! built-in [`workloads`], the model families ([`models`]: BERT, MiniLM,
//! BGE, E5, GTE, RoBERTa, XLM-R, DistilBERT, chosen by `config.json`), the
//! sentence-transformers modules ([`sentence`]), [`SentenceEmbedder`] and
//! [`CrossEncoder`] over any such model directory, the batcher glue
//! ([`glue`]) and the float64 [`reference`] with its [`check`]s.
//!
//! Every op runs on the calling thread's current stream; modules are
//! `Send + Sync`: load once, share with `Arc` across threads.
//!
//! ```
//! use braid_nn::{ops, Tensor};
//! use braid_runtime::{Activation, Device};
//! let device = Device::cpu().unwrap();
//! let x = Tensor::from_slice(&device, &[1.0, -2.0], &[1, 2]).unwrap();
//! let w = Tensor::from_slice(&device, &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], &[3, 2]).unwrap();
//! let y = ops::linear(&x, &w, None, Activation::Relu).unwrap();
//! assert_eq!(y.to_vec().unwrap(), vec![1.0, 0.0, 0.0]);
//! ```

#![forbid(unsafe_code)]

pub mod ops;
pub mod rng;
pub mod storage;
pub mod tensor;

pub use rng::Rng;
pub use tensor::{settle_all, Tensor};
pub mod modules;
pub mod weights;

pub use modules::{BertConfig, BertInput, BertModel, LayerNorm, Linear, Mlp, MultiheadAttention, TransformerEncoderLayer};
pub use weights::{HostTensor, HostWeights};
pub mod workloads;
pub mod reference;

pub use reference::{check, check_parallel, CheckResult};
pub mod cross;
pub mod embedder;
pub mod glue;
pub mod models;
pub mod sentence;
pub mod tokenizer;

pub use cross::CrossEncoder;
pub use embedder::{MiniLm, SentenceEmbedder};
pub use glue::{PairScorer, TokenEmbedder};
pub use models::{Encoder, ModelConfig};
pub use tokenizer::TextTokenizer;

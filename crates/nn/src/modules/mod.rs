//! Modules: layers built from [`crate::ops`] with their weights on a device.
//! Each is loaded from [`crate::HostWeights`] under PyTorch's parameter names
//! (so a PyTorch `state_dict` saved as safetensors loads directly), settles
//! its weights once loaded (see `storage.rs`), and is `Send + Sync`: share
//! one with `Arc` across threads, each thread running `forward` on its own
//! stream.

mod attention;
mod bert;
mod encoder;
mod layer_norm;
mod linear;
mod mlp;

pub use attention::MultiheadAttention;
pub use bert::{BertConfig, BertInput, BertModel};
pub use encoder::TransformerEncoderLayer;
pub use layer_norm::LayerNorm;
pub use linear::Linear;
pub use mlp::Mlp;

/// `prefix.name`, or `name` when the prefix is empty.
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

#[cfg(test)]
mod tests {
    fn is_send_sync<T: Send + Sync>() {}
    #[test]
    fn modules_are_send_sync() {
        is_send_sync::<super::Linear>();
        is_send_sync::<super::Mlp>();
        is_send_sync::<super::TransformerEncoderLayer>();
        is_send_sync::<super::BertModel>();
        is_send_sync::<crate::Tensor>();
        is_send_sync::<crate::SentenceEmbedder>();
    }
}

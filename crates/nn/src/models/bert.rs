//! The BERT family as an [`Encoder`]: BERT and its descendants (MiniLM,
//! BGE, E5, GTE), and RoBERTa / XLM-RoBERTa / CamemBERT, which are BERT with
//! positions numbered from the padding index + 1 and weights under
//! `roberta.`. The model itself is [`crate::BertModel`].

use super::{Encoder, ModelConfig};
use crate::{BertConfig, BertInput, BertModel, HostWeights, Tensor};
use braid_runtime::{DType, Device, Error, Result};

/// Parse the family's config and load the weights.
pub fn load(config: &ModelConfig, w: &HostWeights, device: &Device, dtype: DType) -> Result<BertModel> {
    let c: BertConfig = config.typed("BERT")?;
    if c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 {
        return Err(Error::Model(format!("{}: hidden_size {} is not divisible into num_attention_heads {}", config.path, c.hidden_size, c.num_attention_heads)));
    }
    c.activation().map_err(|e| Error::Model(format!("{}: {e}", config.path)))?;
    if c.position_offset() > 0 && c.max_tokens() == 0 {
        return Err(Error::Model(format!("{}: max_position_embeddings {} leaves no positions after the padding offset {}", config.path, c.max_position_embeddings, c.position_offset())));
    }
    BertModel::load(w, &c, device, dtype)
}

impl Encoder for BertModel {
    fn model_type(&self) -> &str {
        if self.config.model_type.is_empty() {
            "bert"
        } else {
            &self.config.model_type
        }
    }
    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }
    fn max_tokens(&self) -> usize {
        self.config.max_tokens()
    }
    fn type_vocab_size(&self) -> usize {
        self.config.type_vocab_size
    }
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
    fn device(&self) -> &Device {
        BertModel::device(self)
    }
    fn dtype(&self) -> DType {
        BertModel::dtype(self)
    }
    fn params(&self) -> Vec<&Tensor> {
        BertModel::params(self)
    }
    fn forward(&self, input: &BertInput) -> Result<(Tensor, Tensor)> {
        BertModel::forward(self, input)
    }
    fn forward_hidden(&self, input: &BertInput) -> Result<super::Hidden> {
        BertModel::forward_hidden(self, input)
    }
}

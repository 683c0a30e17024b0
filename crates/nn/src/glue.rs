//! The batcher's view of the models ([`braid_batch::BatchModel`]): token
//! ids in, one output per row out, rows padded to the longest within a
//! batch (the batcher groups rows of similar length first). Lives with the
//! models so the CLI and the server share it: [`TokenEmbedder`] for
//! [`SentenceEmbedder`], [`PairScorer`] for [`CrossEncoder`]. Each forward
//! holds a permit of its device's throttle (`BRAID_MAX_INFLIGHT`), so the
//! cap applies to the path the server's models take.

use crate::cross::TypedIds;
use crate::{BertInput, CrossEncoder, SentenceEmbedder};
use braid_batch::BatchModel;
use braid_runtime::Result;
use std::sync::Arc;

/// Token ids in, one sentence embedding out.
pub struct TokenEmbedder(pub Arc<SentenceEmbedder>);

impl BatchModel for TokenEmbedder {
    type Input = Vec<u32>;
    type Output = Vec<f32>;
    type Worker = ();
    fn worker(&self, _: usize) -> Result<()> {
        Ok(())
    }
    fn len(&self, ids: &Vec<u32>) -> usize {
        ids.len()
    }
    fn forward(&self, _: &mut (), inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
        let _permit = self.0.encoder().device().throttle().acquire();
        let input = BertInput::from_rows(&inputs, self.0.tokenizer().pad_id());
        let out = self.0.embed_input(&input)?.to_vec()?;
        Ok(out.chunks(self.0.dim()).map(|c| c.to_vec()).collect())
    }
}

/// Token ids and type ids of a pair (or a single text) in, its logits out.
pub struct PairScorer(pub Arc<CrossEncoder>);

impl BatchModel for PairScorer {
    type Input = TypedIds;
    type Output = Vec<f32>;
    type Worker = ();
    fn worker(&self, _: usize) -> Result<()> {
        Ok(())
    }
    fn len(&self, row: &TypedIds) -> usize {
        row.0.len()
    }
    fn forward(&self, _: &mut (), inputs: Vec<TypedIds>) -> Result<Vec<Vec<f32>>> {
        let _permit = self.0.encoder().device().throttle().acquire();
        self.0.logits(&inputs)
    }
}

//! braid-batch: batch queue, dynamic batcher, pipeline (see DESIGN.md). Filled by the batching issue.

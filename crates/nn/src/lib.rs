//! braid-nn: tensors, ops, modules and models (see DESIGN.md). Filled by the tensors issue.

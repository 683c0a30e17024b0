//! Tests of the CUDA backend against a CPU float64 reference.

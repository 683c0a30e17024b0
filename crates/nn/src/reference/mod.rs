//! The float64 CPU reference of every op and module, written as plainly as
//! possible (no blocking, no fusion), and the [`check`]s that compare a
//! device's results against it. Inputs are f32 (what the device sees);
//! everything inside is f64.

pub mod check;
pub mod family;
mod ops;

pub use check::{check, check_parallel, rel_err, CheckResult};
pub use family::{check_model_dir, FamilyResult};
pub use ops::*;

//! Interpreters: [`FloatExecutor`] runs a [`Graph`](crate::graph::Graph) in float with Burn
//! tensors on any Burn device (single nodes through the crate's `ops` module); the quantized
//! interpreter runs a [`QuantizedProgram`](crate::program::QuantizedProgram) with the int8
//! kernels.

mod activation;
mod chunk;
mod float;
mod floats;
mod plan;
mod quantized;
mod reference;
mod wide_binary;

pub use float::FloatExecutor;
pub(crate) use float::RunNode;
pub(crate) use quantized::nc_plane;
pub(crate) use quantized::{Arithmetic, QuantizedExecutor, Tap};
pub use quantized::{NonFinite, RunValue};

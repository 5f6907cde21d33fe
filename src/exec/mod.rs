//! Interpreters over a [`Graph`](crate::graph::Graph).
//!
//! [`FloatExecutor`] runs a graph in float with Burn tensors on any Burn device; ops we do not
//! lower run through Burn's own interpreter (`fallback`).

mod fallback;
mod float;
mod float_ops;

pub use float::FloatExecutor;

//! Rewrites of a [`Graph`](super::Graph) that keep what it computes.

mod dead;
mod linear;

pub use dead::remove_dead_nodes;
pub use linear::fuse_linear;

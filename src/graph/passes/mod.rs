//! Rewrites of a [`Graph`](super::Graph) that keep what it computes (up to float rounding for
//! BatchNorm folding).

mod batch_norm;
mod dead;
mod equalize;
mod fuse;
mod linear;
mod pointwise;
mod reduce;

pub use batch_norm::fold_batch_norm;
pub(crate) use batch_norm::{
    BatchNormStats, FoldedBatchNorm, fold_batch_norm_recorded, folded_values,
};
pub use dead::remove_dead_nodes;
pub use equalize::equalize_layers;
pub use fuse::fuse_activations;
pub use linear::fuse_linear;
pub use pointwise::{ELEMENTWISE_FALLBACKS, fuse_pointwise};
pub use reduce::merge_means;

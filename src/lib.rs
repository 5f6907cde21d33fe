//! burn-quantize: post-training static int8 quantization for Burn models.
//!
//! The stages, each public on its own:
//!
//! - [`capture`]: run a model's forward once on Burn's capture device and get our op
//!   [`Graph`], every parameter named by its module path, shapes free in the batch size;
//! - [`graph`]: the graph, its passes, and its readable listing (`println!("{graph}")`);
//! - [`exec`]: interpreters over the graph ([`exec::FloatExecutor`] runs it in float on any
//!   Burn device);
//! - [`kernels`]: the hand-written int8 CPU kernels;
//! - [`observe`]: observers that record value ranges and compute quantization parameters
//!   exactly as PyTorch's do;
//! - [`models`]: models used across the project (a torchvision-layout ResNet).

pub mod capture;
pub mod error;
pub mod exec;
pub mod graph;
pub mod kernels;
pub mod models;
pub mod observe;

pub use capture::Forward;
pub use error::{Error, Result};
pub use graph::Graph;

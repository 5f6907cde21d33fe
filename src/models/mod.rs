//! Models used across the project, built from burn-nn modules.

pub mod efficientnet;
pub mod fashion;
pub mod mobilenet_v3;
mod resnet;

pub use resnet::{Block, Downsample, ResNet, ResNetConfig};

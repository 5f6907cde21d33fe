//! Models used across the project, built from burn-nn modules.

mod resnet;

pub use resnet::{Block, Downsample, ResNet, ResNetConfig};

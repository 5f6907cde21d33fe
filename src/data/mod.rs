//! Datasets and image preprocessing used across the project.

pub mod fashion_mnist;
pub mod imagenet;

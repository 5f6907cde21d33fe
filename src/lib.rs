//! burn-quantize: post-training static int8 quantization for Burn models, run on hand-written
//! int8 CPU kernels (u8 activations, i8 weights, i32 accumulation).
//!
//! One call does it all, as PyTorch's `quantize_fx`: capture the model's forward, fold
//! BatchNorm, fuse ReLUs, place observers, calibrate over a Burn `DataLoader`, convert.
//!
//! ```no_run
//! use burn::data::dataloader::DataLoader;
//! use burn::prelude::*;
//! use burn_quantize::quantized::QuantizedModel;
//! use burn_quantize::models::ResNet;
//! use burn_quantize::qconfig::{Engine, QConfig, QConfigMap};
//! use burn_quantize::quantize;
//!
//! # fn main() -> burn_quantize::Result<()> {
//! # let device = Device::default();
//! # let images = Tensor::<4>::zeros([1, 3, 224, 224], &device);
//! # let calibration_loader: std::sync::Arc<dyn DataLoader<Tensor<4>>> = todo!();
//! let model = ResNet::resnet18(1000, &device).load_pytorch("resnet18.pth")?;
//! let qconfig = QConfigMap::global(QConfig::preset(Engine::X86)) // get_default_qconfig("x86")
//!     .module("fc", None);                                        // keep the classifier in float
//! let qmodel = quantize(&model, &qconfig, calibration_loader.as_ref())?;
//! let logits: Tensor<2> = qmodel.forward(images);               // int8 inside; try_forward: Result
//! qmodel.save("resnet18_int8.bpk")?;
//! let again = QuantizedModel::load("resnet18_int8.bpk", &device)?;
//! # Ok(()) }
//! ```
//!
//! The stages, each public on its own:
//!
//! - [`capture`]: run a model's forward once on Burn's capture device and get our op
//!   [`Graph`], every parameter named by its module path, shapes free in the batch size;
//! - [`graph`]: the graph, its passes (BatchNorm folding, activation fusion, ...) and its
//!   readable listing (`println!("{graph}")`);
//! - [`qconfig`]: which part of the model is quantized how ([`qconfig::QConfigMap`], PyTorch's
//!   presets);
//! - [`observe`]: observers that record value ranges and compute quantization parameters
//!   exactly as PyTorch's do;
//! - [`prepare`]: folding, fusion, observer placement, and calibration with any closure or
//!   over a `DataLoader`;
//! - [`convert`]: a calibrated model to its int8 [`program`] (`QConv2d`/`QLinear` and int8 add,
//!   cat, pool steps; float where no int8 kernel exists, reported);
//! - [`program`]: the int8 program (steps, layers, value parameters, the report), written by
//!   `convert`, run by `exec`, saved by `record`;
//! - [`quantized`]: the [`quantized::QuantizedModel`] (program, layers and planned executor;
//!   [`quantized::convert`] makes one) and the bit-exact debug model;
//! - [`qat`]: quantization-aware training ([`qat::prepare_qat`]: the prepared graph trained
//!   with fake quantization on Burn's autodiff backend, converted like a calibrated model);
//! - [`numeric`]: the numeric suite, float vs int8 layer by layer (SQNR, cosine, max error);
//! - [`record`]: save and load through Burn's burnpack records;
//! - [`exec`]: the float and quantized interpreters;
//! - [`kernels`]: the int8 CPU kernels (AVX-512 VNNI, AVX2, scalar; AMX and AVX-VNNI guarded);
//! - [`nn`]: the quantized layers as Burn modules;
//! - [`models`]: models used across the project (a torchvision-layout ResNet, EfficientNet-Lite0,
//!   a small residual CNN for Fashion-MNIST);
//! - [`data`]: datasets and image preprocessing (Fashion-MNIST, ImageNet-style folders).

#![warn(missing_docs)]

pub mod capture;
pub mod convert;
pub mod data;
pub mod error;
pub mod exec;
pub mod graph;
pub mod kernels;
pub mod models;
pub mod nn;
pub mod numeric;
pub mod observe;
mod ops;
pub mod prepare;
pub mod program;
pub mod qat;
pub mod qconfig;
mod quantize;
pub mod quantized;
pub mod record;

pub use capture::{Forward, Tensors};
pub use error::{Error, Result};
pub use graph::Graph;
pub use quantize::{quantize, quantize_dynamic};

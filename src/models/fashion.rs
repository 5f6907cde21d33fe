//! The small residual CNN for Fashion-MNIST, the quickstart's embedded default.
//!
//! A 3x3 stem convolution at full resolution, residual blocks (conv+BN+ReLU, conv+BN, add,
//! ReLU; a strided 1x1 projection on the shortcut where the shape changes), a global average
//! pool and a linear head. Every piece quantizes: BatchNorm folds into its convolution, the ReLUs
//! fuse into the convolution or the add before them, and the pool, flatten and linear head run
//! in int8.
//!
//! ```no_run
//! use burn::prelude::*;
//! use burn_quantize::models::fashion::FashionNet;
//!
//! let device = Device::flex();
//! let model = FashionNet::load_weights("data/fashion-mnist/model.bpk", &device)?;
//! let logits: Tensor<2> = model.forward(Tensor::zeros([1, 1, 28, 28], &device));
//! # Ok::<(), burn_quantize::Error>(())
//! ```

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::tensor::{Device, Tensor};

use crate::capture::Forward;
use crate::{Error, Result};

/// The shape of a [`FashionNet`]: stem width, stages of residual blocks, classes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FashionNetConfig {
    /// Output channels of the stem convolution.
    pub stem: usize,
    /// One `(width, blocks)` pair per stage; every stage halves the resolution in its first
    /// block (28 -> 14 -> 7 -> 4 for three stages).
    pub stages: Vec<(usize, usize)>,
    /// Number of classes of the linear head.
    pub num_classes: usize,
}

impl Default for FashionNetConfig {
    /// The shipped model: stem 32, stages 32/64/128 with one block each, 10 classes.
    fn default() -> Self {
        FashionNetConfig {
            stem: 32,
            stages: vec![(32, 1), (64, 1), (128, 1)],
            num_classes: 10,
        }
    }
}

impl FashionNetConfig {
    /// Builds the model with Burn's default initialisation.
    pub fn init(&self, device: &Device) -> FashionNet {
        let mut cin = self.stem;
        let mut blocks = Vec::new();
        for &(width, count) in &self.stages {
            for i in 0..count {
                let stride = if i == 0 { 2 } else { 1 };
                blocks.push(Residual::new(cin, width, stride, device));
                cin = width;
            }
        }
        FashionNet {
            stem: ConvBn::new(1, self.stem, 3, 1, device),
            relu: Relu::new(),
            blocks,
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            fc: LinearConfig::new(cin, self.num_classes).init(device),
        }
    }
}

/// A convolution without bias followed by BatchNorm.
#[derive(Module, Debug)]
pub struct ConvBn {
    /// The convolution (`k x k`, padding `k / 2`).
    pub conv: Conv2d,
    /// Its BatchNorm.
    pub bn: BatchNorm,
}

impl ConvBn {
    fn new(cin: usize, cout: usize, k: usize, stride: usize, device: &Device) -> Self {
        let p = k / 2;
        ConvBn {
            conv: Conv2dConfig::new([cin, cout], [k, k])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .with_bias(false)
                .init(device),
            bn: BatchNormConfig::new(cout).init(device),
        }
    }

    /// Runs the convolution and the BatchNorm.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.bn.forward(self.conv.forward(x))
    }
}

/// A basic residual block: `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`.
#[derive(Module, Debug)]
pub struct Residual {
    /// First 3x3 convolution and BatchNorm (carries the stride).
    pub conv1: ConvBn,
    /// Second 3x3 convolution and BatchNorm.
    pub conv2: ConvBn,
    /// Strided 1x1 projection of the shortcut, where the shape changes.
    pub shortcut: Option<ConvBn>,
    /// ReLU after the first convolution and after the add.
    pub relu: Relu,
}

impl Residual {
    fn new(cin: usize, cout: usize, stride: usize, device: &Device) -> Self {
        Residual {
            conv1: ConvBn::new(cin, cout, 3, stride, device),
            conv2: ConvBn::new(cout, cout, 3, 1, device),
            shortcut: (stride != 1 || cin != cout)
                .then(|| ConvBn::new(cin, cout, 1, stride, device)),
            relu: Relu::new(),
        }
    }

    /// Runs the block.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let shortcut = match &self.shortcut {
            Some(projection) => projection.forward(x.clone()),
            None => x.clone(),
        };
        let y = self.relu.forward(self.conv1.forward(x));
        self.relu.forward(self.conv2.forward(y) + shortcut)
    }
}

/// The Fashion-MNIST residual CNN: images `[N, 1, 28, 28]` (normalised as
/// [`FashionMnistBatcher`](crate::data::fashion_mnist::FashionMnistBatcher) does) to logits
/// `[N, 10]`.
#[derive(Module, Debug)]
pub struct FashionNet {
    /// 3x3 stem convolution and BatchNorm.
    pub stem: ConvBn,
    /// ReLU after the stem.
    pub relu: Relu,
    /// The residual blocks, stage after stage.
    pub blocks: Vec<Residual>,
    /// Global average pool.
    pub pool: AdaptiveAvgPool2d,
    /// Classifier.
    pub fc: Linear,
}

impl FashionNet {
    /// The shipped architecture ([`FashionNetConfig::default`]) with fresh weights.
    pub fn new(device: &Device) -> Self {
        FashionNetConfig::default().init(device)
    }

    /// The shipped architecture with the weights of a burnpack file written by
    /// [`FashionNet::save_weights`]. Every parameter must be in the file, with its shape.
    pub fn load_weights(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        Self::new(device)
            .try_load_file(path)
            .map_err(|e| Error::Weights {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
    }

    /// Writes the weights (BatchNorm running statistics included) to a burnpack file.
    pub fn save_weights(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        Module::save_file(self.valid(), path).map_err(|e| Error::Weights {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Runs the model: images `[N, 1, 28, 28]` to logits `[N, classes]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x = self.relu.forward(self.stem.forward(images));
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.fc.forward(self.pool.forward(x).flatten(1, 3))
    }
}

impl Forward<4, 2> for FashionNet {
    fn forward(&self, input: Tensor<4>) -> Tensor<2> {
        FashionNet::forward(self, input)
    }
}

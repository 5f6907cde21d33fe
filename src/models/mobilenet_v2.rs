//! MobileNetV2 in torchvision's layout (`torchvision.models.mobilenet_v2`, width 1.0), built from
//! burn-nn modules: inverted residual blocks with ReLU6 and linear bottlenecks.
//!
//! Module paths are torchvision's state-dict keys, but for the children of its
//! `Conv2dNormActivation`, which Burn cannot name `0` and `1`: they are `conv` and `bn` here.
//!
//! - `features.0.0.weight`, `features.0.1.*` (the stem; `features.18` the last convolution alike)
//!   are `features.0.conv.weight`, `features.0.bn.*`;
//! - `features.N.conv.M.0.weight`, `features.N.conv.M.1.*` (a block's expansion and depthwise
//!   convolutions) are `features.N.conv.M.conv.weight`, `features.N.conv.M.bn.*`;
//! - `features.N.conv.M.weight` and `features.N.conv.{M+1}.*` (the block's 1x1 projection and its
//!   BatchNorm, plain `Conv2d` and `BatchNorm2d` in torchvision) are
//!   `features.N.conv.M.conv.weight` and `features.N.conv.M.bn.*`: one [`ConvBn`] item;
//! - `classifier.1.*` (the last linear layer) is the same (`classifier.0`, Dropout, is `None`).
//!
//! Padding is symmetric (`(k - 1) / 2`), so the model works at any input size. BatchNorm uses
//! PyTorch's default `eps = 1e-5`. Dropout is left out: the model is for inference.

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::store::PytorchStore;
use burn::tensor::{Device, Tensor};

use super::mobilenet_v3::{conv, make_divisible};
use crate::Result;
use crate::capture::Forward;

/// torchvision's `inverted_residual_setting`: expansion `t`, output channels `c`, repeats `n`,
/// stride `s` of the first repeat.
const SETTINGS: [[usize; 4]; 7] = [
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
];

/// A convolution, its BatchNorm and an optional ReLU6.
#[derive(Module, Debug)]
pub struct ConvBn {
    /// The convolution, without bias.
    pub conv: Conv2d,
    /// Its BatchNorm.
    pub bn: BatchNorm,
    /// Whether ReLU6 follows (every convolution but a block's projection).
    #[module(skip)]
    pub relu6: bool,
}

impl ConvBn {
    /// `cin -> cout` with a `kernel x kernel` window, `stride` and `groups`.
    fn new(
        [cin, cout]: [usize; 2],
        [kernel, stride, groups]: [usize; 3],
        relu6: bool,
        device: &Device,
    ) -> Self {
        ConvBn {
            conv: conv(cin, cout, kernel, stride, groups, false, device),
            bn: BatchNormConfig::new(cout).init(device),
            relu6,
        }
    }

    /// Runs the convolution, the BatchNorm and ReLU6 if present.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.bn.forward(self.conv.forward(x));
        if self.relu6 { y.clamp(0.0, 6.0) } else { y }
    }
}

/// One item of torchvision's `features`: the stem or the last convolution (`conv`, `bn`), or an
/// inverted residual block (its layers in `conv`, torchvision's name for them).
#[derive(Module, Debug)]
pub struct Feature {
    /// The stem's or the last convolution (torchvision's `features.N.0`).
    pub single: Option<ConvBn>,
    /// An inverted residual block: optional 1x1 expansion, depthwise 3x3, 1x1 projection.
    pub conv: Vec<ConvBn>,
    /// Whether the input is added to the output (stride 1, same channels in and out).
    #[module(skip)]
    pub residual: bool,
}

impl Feature {
    /// torchvision's `InvertedResidual(cin, cout, stride, expand_ratio)`.
    fn inverted_residual(
        cin: usize,
        cout: usize,
        stride: usize,
        expand: usize,
        device: &Device,
    ) -> Self {
        let hidden = cin * expand;
        let mut conv = Vec::new();
        if expand != 1 {
            conv.push(ConvBn::new([cin, hidden], [1, 1, 1], true, device));
        }
        conv.push(ConvBn::new(
            [hidden, hidden],
            [3, stride, hidden],
            true,
            device,
        ));
        conv.push(ConvBn::new([hidden, cout], [1, 1, 1], false, device));
        Feature {
            single: None,
            conv,
            residual: stride == 1 && cin == cout,
        }
    }

    /// Runs the item.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut y = match &self.single {
            Some(layer) => layer.forward(x.clone()),
            None => x.clone(),
        };
        for layer in &self.conv {
            y = layer.forward(y);
        }
        if self.residual { y + x } else { y }
    }
}

/// MobileNetV2 with torchvision's module paths (see the module documentation for the renaming).
#[derive(Module, Debug)]
pub struct MobileNetV2 {
    /// `features.0` the stem (3x3 stride 2, 32 channels), `features.1` to `features.17` the
    /// inverted residual blocks, `features.18` the last 1x1 convolution (1280 channels).
    pub features: Vec<Feature>,
    /// Global average pool.
    pub avgpool: AdaptiveAvgPool2d,
    /// torchvision's classifier slots: `0` Dropout (left out, `None`), `1` Linear.
    pub classifier: [Option<Linear>; 2],
}

impl MobileNetV2 {
    /// torchvision's `mobilenet_v2` (width 1.0) with Burn's default initialisation: 3,504,872
    /// parameters with 1000 classes.
    pub fn new(num_classes: usize, device: &Device) -> Self {
        let single = |layer| Feature {
            single: Some(layer),
            conv: Vec::new(),
            residual: false,
        };
        let stem = make_divisible(32);
        let mut features = vec![single(ConvBn::new([3, stem], [3, 2, 1], true, device))];
        let mut cin = stem;
        for [t, c, n, s] in SETTINGS {
            let cout = make_divisible(c);
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                features.push(Feature::inverted_residual(cin, cout, stride, t, device));
                cin = cout;
            }
        }
        let last = 1280;
        features.push(single(ConvBn::new([cin, last], [1, 1, 1], true, device)));
        MobileNetV2 {
            features,
            avgpool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            classifier: [
                None,
                Some(LinearConfig::new(last, num_classes).init(device)),
            ],
        }
    }

    /// Runs the model: images `[N, 3, H, W]` (any size) to logits `[N, classes]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x = images;
        for feature in &self.features {
            x = feature.forward(x);
        }
        let x = self.avgpool.forward(x).flatten(1, 3);
        match &self.classifier[1] {
            Some(linear) => linear.forward(x),
            None => x,
        }
    }

    /// Loads a torchvision state dict (`.pth`) of `mobilenet_v2`, such as
    /// `mobilenet_v2-b0353104.pth`. Every parameter of the model must be found in the file and
    /// every tensor of the file used (but BatchNorm's `num_batches_tracked`), else it is an error
    /// that names the keys.
    pub fn load_pytorch(self, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        // Stem and last convolution: `features.N.{0,1}.` -> `features.N.single.{conv,bn}.`.
        // Blocks: `conv.M.{0,1}.` (a Conv2dNormActivation) -> `conv.M.{conv,bn}.`; the plain
        // projection `conv.M.weight` and its BatchNorm `conv.{M+1}.` -> `conv.M.{conv,bn}.`.
        let store = PytorchStore::from_file(path)
            .with_key_remapping(r"^(features\.(?:0|18))\.0\.", "${1}.single.conv.")
            .with_key_remapping(r"^(features\.(?:0|18))\.1\.", "${1}.single.bn.")
            .with_key_remapping(r"^(features\.\d+\.conv\.\d+)\.0\.", "${1}.conv.")
            .with_key_remapping(r"^(features\.\d+\.conv\.\d+)\.1\.", "${1}.bn.")
            .with_key_remapping(r"^(features\.1\.conv)\.1\.weight$", "${1}.1.conv.weight")
            .with_key_remapping(r"^(features\.1\.conv)\.2\.", "${1}.1.bn.")
            .with_key_remapping(
                r"^(features\.(?:[2-9]|1[0-7])\.conv)\.2\.weight$",
                "${1}.2.conv.weight",
            )
            .with_key_remapping(r"^(features\.(?:[2-9]|1[0-7])\.conv)\.3\.", "${1}.2.bn.")
            .map_indices_contiguous(false);
        super::load_every_tensor(self, store, path)
    }
}

impl Forward<4, 2> for MobileNetV2 {
    fn forward(&self, input: Tensor<4>) -> Tensor<2> {
        MobileNetV2::forward(self, input)
    }
}

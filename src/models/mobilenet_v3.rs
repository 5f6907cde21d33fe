//! MobileNetV3-Large in torchvision's layout (`torchvision.models.mobilenet_v3_large`), built from
//! burn-nn modules: inverted residual blocks with squeeze-and-excite, ReLU and Hardswish.
//!
//! Module paths mirror torchvision's state-dict keys as closely as Burn allows. Burn cannot name
//! a field `0`, and a `Vec` holds one type, so every item of `features` is one [`Feature`] and
//! every item of a block's `block` one [`BlockLayer`], each with optional parts. The only
//! renaming is that of torchvision's `Conv2dNormActivation` children: `0` (the convolution) is
//! `conv` here and `1` (the BatchNorm) is `bn`:
//!
//! - `features.0.0.weight`, `features.0.1.*` (the stem; `features.16` the last convolution alike)
//!   are `features.0.conv.weight`, `features.0.bn.*`;
//! - `features.N.block.M.0.weight`, `features.N.block.M.1.*` (the convolutions of block `N`) are
//!   `features.N.block.M.conv.weight`, `features.N.block.M.bn.*`;
//! - `features.N.block.M.fc1.*` and `.fc2.*` (squeeze-and-excite) are the same;
//! - `classifier.0.*` and `classifier.3.*` are the same (`classifier.1` and `.2`, torchvision's
//!   parameter-free Hardswish and Dropout, are `None`).
//!
//! So [`MobileNetV3::load_pytorch`] needs two remappings and a qconfig names blocks, their
//! sub-layers and the classifier as PyTorch does (`features.4.block.2`, `classifier.3`).
//!
//! Padding is symmetric (`(k - 1) / 2`), so the model works at any input size. BatchNorm uses
//! `eps = 1e-3` as torchvision's MobileNetV3. Dropout before the last linear layer is left out:
//! the model is for inference. Dilation (torchvision's `dilated=True`) is not supported.

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::store::PytorchStore;
use burn::tensor::activation::{hard_sigmoid, hard_swish, relu};
use burn::tensor::{Device, Tensor};

use crate::Result;
use crate::capture::Forward;

/// torchvision's BatchNorm epsilon for MobileNetV3.
const BN_EPS: f64 = 1e-3;

/// The activation after a convolution and its BatchNorm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// None (the projection convolutions).
    Identity,
    /// ReLU (`"RE"` in torchvision's block settings).
    Relu,
    /// Hardswish (`"HS"`): `x * relu6(x + 3) / 6`.
    Hardswish,
}

impl Activation {
    /// Applies the activation with Burn's own ops (`relu`, `hard_swish`).
    pub fn forward(self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Activation::Identity => x,
            Activation::Relu => relu(x),
            Activation::Hardswish => hard_swish(x),
        }
    }
}

/// One inverted residual block, as a row of torchvision's `_mobilenet_v3_conf` (dilation 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    /// Depthwise kernel size.
    pub kernel: usize,
    /// Expanded channels (no 1x1 expansion convolution when equal to the input channels).
    pub expanded: usize,
    /// Output channels.
    pub out: usize,
    /// Whether a squeeze-and-excite layer follows the depthwise convolution.
    pub squeeze_excite: bool,
    /// Hardswish (`"HS"`) instead of ReLU (`"RE"`) after the expansion and depthwise convolutions.
    pub hardswish: bool,
    /// Stride of the depthwise convolution.
    pub stride: usize,
}

/// The shape of a MobileNetV3: stem, blocks, last convolution, classifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MobileNetV3Config {
    /// Output channels of the 3x3 stride-2 stem convolution (16).
    pub stem: usize,
    /// The inverted residual blocks, in order (`features.1` to `features.15` for Large).
    pub blocks: Vec<BlockConfig>,
    /// Output channels of the last 1x1 convolution (960 for Large: 6 x 160).
    pub last: usize,
    /// Width of the classifier's hidden linear layer (1280 for Large).
    pub hidden: usize,
    /// Number of classes of the final linear layer.
    pub num_classes: usize,
}

impl MobileNetV3Config {
    /// torchvision's `mobilenet_v3_large` (width 1.0, not dilated): 15 inverted residual blocks,
    /// 5,483,032 parameters with 1000 classes.
    pub fn large(num_classes: usize) -> Self {
        let block = |kernel, expanded, out, squeeze_excite, act: &str, stride| BlockConfig {
            kernel,
            expanded,
            out,
            squeeze_excite,
            hardswish: act == "HS",
            stride,
        };
        MobileNetV3Config {
            stem: 16,
            blocks: vec![
                block(3, 16, 16, false, "RE", 1),
                block(3, 64, 24, false, "RE", 2),
                block(3, 72, 24, false, "RE", 1),
                block(5, 72, 40, true, "RE", 2),
                block(5, 120, 40, true, "RE", 1),
                block(5, 120, 40, true, "RE", 1),
                block(3, 240, 80, false, "HS", 2),
                block(3, 200, 80, false, "HS", 1),
                block(3, 184, 80, false, "HS", 1),
                block(3, 184, 80, false, "HS", 1),
                block(3, 480, 112, true, "HS", 1),
                block(3, 672, 112, true, "HS", 1),
                block(5, 672, 160, true, "HS", 2),
                block(5, 960, 160, true, "HS", 1),
                block(5, 960, 160, true, "HS", 1),
            ],
            last: 960,
            hidden: 1280,
            num_classes,
        }
    }

    /// Every width (stem, blocks, last convolution, hidden layer) divided by `divisor` (at
    /// least 1 channel), for small test models with the same structure. The squeeze-and-excite
    /// widths follow from the expanded widths (at least 8).
    pub fn narrowed(self, divisor: usize) -> Self {
        let narrow = |c: usize| (c / divisor).max(1);
        MobileNetV3Config {
            stem: narrow(self.stem),
            blocks: self
                .blocks
                .into_iter()
                .map(|b| BlockConfig {
                    expanded: narrow(b.expanded),
                    out: narrow(b.out),
                    ..b
                })
                .collect(),
            last: narrow(self.last),
            hidden: narrow(self.hidden),
            ..self
        }
    }

    /// Builds the model with Burn's default initialisation.
    pub fn init(&self, device: &Device) -> MobileNetV3 {
        let mut features = vec![Feature::conv(
            conv(3, self.stem, 3, 2, 1, false, device),
            self.stem,
            Activation::Hardswish,
            device,
        )];
        let mut cin = self.stem;
        for block in &self.blocks {
            features.push(Feature::inverted_residual(cin, block, device));
            cin = block.out;
        }
        features.push(Feature::conv(
            conv(cin, self.last, 1, 1, 1, false, device),
            self.last,
            Activation::Hardswish,
            device,
        ));
        MobileNetV3 {
            features,
            avgpool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            classifier: [
                Some(LinearConfig::new(self.last, self.hidden).init(device)),
                None,
                None,
                Some(LinearConfig::new(self.hidden, self.num_classes).init(device)),
            ],
        }
    }
}

/// MobileNetV3 with torchvision's module paths (but `conv`/`bn` for the children `0`/`1` of a
/// convolution-BatchNorm-activation).
#[derive(Module, Debug)]
pub struct MobileNetV3 {
    /// `features.0` the stem (conv 3x3 stride 2, BN, Hardswish), `features.1` to `features.15`
    /// the inverted residual blocks, `features.16` the last 1x1 convolution (BN, Hardswish).
    pub features: Vec<Feature>,
    /// Global average pool.
    pub avgpool: AdaptiveAvgPool2d,
    /// torchvision's classifier slots: `0` Linear (then Hardswish, slot `1`), `2` Dropout (left
    /// out), `3` Linear. Slots 1 and 2 have no parameters and are `None`.
    pub classifier: [Option<Linear>; 4],
}

/// One item of torchvision's `features`: a convolution-BatchNorm-activation (`conv`, `bn`; the
/// stem and the last convolution) or an inverted residual block (`block`). Its forward runs
/// whatever parts are present in that order, then adds the input when `residual`.
#[derive(Module, Debug)]
pub struct Feature {
    /// The convolution (torchvision's `features.N.0`), for the stem and the last convolution.
    pub conv: Option<Conv2d>,
    /// Its BatchNorm (`features.N.1`).
    pub bn: Option<BatchNorm>,
    /// The layers of an inverted residual block (`features.N.block`): optional 1x1 expansion,
    /// depthwise convolution, optional squeeze-and-excite, 1x1 projection. Empty otherwise.
    pub block: Vec<BlockLayer>,
    /// The activation after `conv` and `bn`.
    #[module(skip)]
    pub activation: Activation,
    /// Whether the input is added to the output (stride 1, same channels in and out).
    #[module(skip)]
    pub residual: bool,
}

/// One item of an inverted residual block's `block`: a convolution-BatchNorm-activation (`conv`,
/// `bn`) or a squeeze-and-excite layer (`avgpool`, `fc1`, `fc2`). Its forward runs whatever parts
/// are present in that order.
#[derive(Module, Debug)]
pub struct BlockLayer {
    /// The convolution (torchvision's `block.M.0`), without bias.
    pub conv: Option<Conv2d>,
    /// Its BatchNorm (`block.M.1`).
    pub bn: Option<BatchNorm>,
    /// Squeeze-and-excite: the global average pool.
    pub avgpool: Option<AdaptiveAvgPool2d>,
    /// Squeeze-and-excite: 1x1 convolution with bias to the squeeze width (then ReLU).
    pub fc1: Option<Conv2d>,
    /// Squeeze-and-excite: 1x1 convolution with bias back to the block width (then Hardsigmoid).
    pub fc2: Option<Conv2d>,
    /// The activation after `conv` and `bn`.
    #[module(skip)]
    pub activation: Activation,
}

/// torchvision's `_make_divisible(v, 8)`: `v` rounded to the nearest multiple of 8 (at least 8),
/// plus 8 if rounding down lost more than 10 %.
pub fn make_divisible(v: usize) -> usize {
    let rounded = ((v + 4) / 8 * 8).max(8);
    if (rounded as f64) < 0.9 * v as f64 {
        rounded + 8
    } else {
        rounded
    }
}

/// A convolution with symmetric padding `(k - 1) / 2` (shared with MobileNetV2).
pub(super) fn conv(
    cin: usize,
    cout: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
    bias: bool,
    device: &Device,
) -> Conv2d {
    let pad = (kernel - 1) / 2;
    Conv2dConfig::new([cin, cout], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_groups(groups)
        .with_bias(bias)
        .init(device)
}

fn batch_norm(channels: usize, device: &Device) -> BatchNorm {
    BatchNormConfig::new(channels)
        .with_epsilon(BN_EPS)
        .init(device)
}

/// Runs the optional convolution, the optional BatchNorm, then the activation.
fn conv_norm_activation(
    conv: &Option<Conv2d>,
    bn: &Option<BatchNorm>,
    activation: Activation,
    mut x: Tensor<4>,
) -> Tensor<4> {
    if let Some(conv) = conv {
        x = conv.forward(x);
    }
    if let Some(bn) = bn {
        x = bn.forward(x);
    }
    activation.forward(x)
}

impl Feature {
    /// The stem or the last convolution: `conv`, its BatchNorm over `channels`, `activation`.
    fn conv(conv: Conv2d, channels: usize, activation: Activation, device: &Device) -> Self {
        Feature {
            conv: Some(conv),
            bn: Some(batch_norm(channels, device)),
            block: Vec::new(),
            activation,
            residual: false,
        }
    }

    /// An inverted residual block from `cin` channels, as torchvision's `InvertedResidual`.
    fn inverted_residual(cin: usize, config: &BlockConfig, device: &Device) -> Self {
        let act = if config.hardswish {
            Activation::Hardswish
        } else {
            Activation::Relu
        };
        let hidden = config.expanded;
        let mut block = Vec::new();
        if hidden != cin {
            block.push(BlockLayer::conv(
                conv(cin, hidden, 1, 1, 1, false, device),
                hidden,
                act,
                device,
            ));
        }
        let depthwise = conv(
            hidden,
            hidden,
            config.kernel,
            config.stride,
            hidden,
            false,
            device,
        );
        block.push(BlockLayer::conv(depthwise, hidden, act, device));
        if config.squeeze_excite {
            block.push(BlockLayer::squeeze_excite(hidden, device));
        }
        let project = conv(hidden, config.out, 1, 1, 1, false, device);
        block.push(BlockLayer::conv(
            project,
            config.out,
            Activation::Identity,
            device,
        ));
        Feature {
            conv: None,
            bn: None,
            block,
            activation: Activation::Identity,
            residual: config.stride == 1 && cin == config.out,
        }
    }

    /// Runs the item.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut y = conv_norm_activation(&self.conv, &self.bn, self.activation, x.clone());
        for layer in &self.block {
            y = layer.forward(y);
        }
        if self.residual { y + x } else { y }
    }
}

impl BlockLayer {
    /// A convolution-BatchNorm-activation with `channels` outputs.
    fn conv(conv: Conv2d, channels: usize, activation: Activation, device: &Device) -> Self {
        BlockLayer {
            conv: Some(conv),
            bn: Some(batch_norm(channels, device)),
            avgpool: None,
            fc1: None,
            fc2: None,
            activation,
        }
    }

    /// torchvision's `SqueezeExcitation(channels, make_divisible(channels / 4))` with ReLU and
    /// Hardsigmoid.
    fn squeeze_excite(channels: usize, device: &Device) -> Self {
        let squeeze = make_divisible(channels / 4);
        BlockLayer {
            conv: None,
            bn: None,
            avgpool: Some(AdaptiveAvgPool2dConfig::new([1, 1]).init()),
            fc1: Some(conv(channels, squeeze, 1, 1, 1, true, device)),
            fc2: Some(conv(squeeze, channels, 1, 1, 1, true, device)),
            activation: Activation::Identity,
        }
    }

    /// Runs the layer. Squeeze-and-excite: `scale = hardsigmoid(fc2(relu(fc1(avgpool(x)))))`,
    /// then `scale * x`, Hardsigmoid being `clamp(x / 6 + 1/2, 0, 1)`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = conv_norm_activation(&self.conv, &self.bn, self.activation, x);
        let (Some(avgpool), Some(fc1), Some(fc2)) = (&self.avgpool, &self.fc1, &self.fc2) else {
            return x;
        };
        let scale = relu(fc1.forward(avgpool.forward(x.clone())));
        let scale = hard_sigmoid(fc2.forward(scale), 1.0 / 6.0, 0.5);
        scale * x
    }
}

impl MobileNetV3 {
    /// torchvision's `mobilenet_v3_large` with Burn's default initialisation.
    pub fn large(num_classes: usize, device: &Device) -> Self {
        MobileNetV3Config::large(num_classes).init(device)
    }

    /// Runs the model: images `[N, 3, H, W]` (any size) to logits `[N, classes]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x = images;
        for feature in &self.features {
            x = feature.forward(x);
        }
        let mut x = self.avgpool.forward(x).flatten(1, 3);
        let [hidden, _hardswish, _dropout, out] = &self.classifier;
        if let Some(linear) = hidden {
            x = hard_swish(linear.forward(x));
        }
        if let Some(linear) = out {
            x = linear.forward(x);
        }
        x
    }

    /// Loads a torchvision state dict (`.pth`, old or new format) such as
    /// `mobilenet_v3_large-8738ca79.pth` or `torch.save(model.state_dict(), ...)` of
    /// `mobilenet_v3_large`. Every parameter of the model must be found in the file and every
    /// tensor of the file used (but BatchNorm's `num_batches_tracked`), else it is an error that
    /// names the keys.
    pub fn load_pytorch(self, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        // Conv2dNormActivation's children `0` / `1` are `conv` / `bn` here; the indices of
        // `features`, `block` and `classifier` are torchvision's own (no renumbering).
        let owner = r"^(features\.\d+(?:\.block\.\d+)?)";
        let store = PytorchStore::from_file(path)
            .with_key_remapping(format!(r"{owner}\.0\."), "${1}.conv.")
            .with_key_remapping(format!(r"{owner}\.1\."), "${1}.bn.")
            .map_indices_contiguous(false);
        super::load_every_tensor(self, store, path)
    }
}

impl Forward<4, 2> for MobileNetV3 {
    fn forward(&self, input: Tensor<4>) -> Tensor<2> {
        MobileNetV3::forward(self, input)
    }
}

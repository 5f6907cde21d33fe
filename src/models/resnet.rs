//! A ResNet with torchvision's layout, built from burn-nn modules.
//!
//! Its module paths are torchvision's (`layer1.0.conv1.weight`, `layer2.0.downsample.conv`,
//! `fc.weight`), except that torchvision's `downsample.0` / `downsample.1` are named
//! `downsample.conv` / `downsample.bn` here; [`ResNet::load_pytorch`] maps them when it loads a
//! torchvision state dict.

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::store::{ModuleSnapshot, PytorchStore};
use burn::tensor::{Device, Tensor};

use crate::capture::Forward;
use crate::{Error, Result};

/// The shape of a ResNet: block kind, blocks per stage, stage widths, classes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResNetConfig {
    /// Bottleneck blocks (1x1, 3x3, 1x1 with expansion 4) instead of basic blocks (3x3, 3x3).
    pub bottleneck: bool,
    /// Blocks in each of the four stages (`[2, 2, 2, 2]` for ResNet-18).
    pub layers: [usize; 4],
    /// Width of each stage (`[64, 128, 256, 512]` for torchvision's ResNets).
    pub widths: [usize; 4],
    /// Output channels of the 7x7 stem convolution (64 for torchvision's ResNets).
    pub stem: usize,
    /// Number of classes of the final linear layer.
    pub num_classes: usize,
}

impl ResNetConfig {
    /// torchvision's `resnet18` layout.
    pub fn resnet18(num_classes: usize) -> Self {
        ResNetConfig {
            bottleneck: false,
            layers: [2, 2, 2, 2],
            widths: [64, 128, 256, 512],
            stem: 64,
            num_classes,
        }
    }

    /// torchvision's `resnet34` layout.
    pub fn resnet34(num_classes: usize) -> Self {
        ResNetConfig {
            layers: [3, 4, 6, 3],
            ..Self::resnet18(num_classes)
        }
    }

    /// torchvision's `resnet50` layout.
    pub fn resnet50(num_classes: usize) -> Self {
        ResNetConfig {
            bottleneck: true,
            layers: [3, 4, 6, 3],
            ..Self::resnet18(num_classes)
        }
    }

    /// Every width (stem included) divided by `divisor`, as in the narrow test ResNets.
    pub fn narrowed(self, divisor: usize) -> Self {
        ResNetConfig {
            widths: self.widths.map(|w| w / divisor),
            stem: self.stem / divisor,
            ..self
        }
    }

    /// Builds the model with Burn's default initialisation.
    pub fn init(&self, device: &Device) -> ResNet {
        let expansion = if self.bottleneck { 4 } else { 1 };
        let mut in_channels = self.stem;
        let mut stages = Vec::new();
        for (stage, (&blocks, &width)) in self.layers.iter().zip(&self.widths).enumerate() {
            let stride = if stage == 0 { 1 } else { 2 };
            let stage_blocks = (0..blocks)
                .map(|i| {
                    let block = Block::new(
                        in_channels,
                        width,
                        if i == 0 { stride } else { 1 },
                        self.bottleneck,
                        device,
                    );
                    in_channels = width * expansion;
                    block
                })
                .collect();
            stages.push(stage_blocks);
        }
        let [layer1, layer2, layer3, layer4]: [Vec<Block>; 4] =
            stages.try_into().expect("four stages");
        ResNet {
            conv1: conv(3, self.stem, 7, 2, device),
            bn1: BatchNormConfig::new(self.stem).init(device),
            relu: Relu::new(),
            maxpool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            layer1,
            layer2,
            layer3,
            layer4,
            avgpool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            fc: LinearConfig::new(in_channels, self.num_classes).init(device),
        }
    }
}

/// A ResNet (basic or bottleneck blocks) with torchvision's module paths.
#[derive(Module, Debug)]
pub struct ResNet {
    /// 7x7 stride-2 stem convolution.
    pub conv1: Conv2d,
    /// Stem BatchNorm.
    pub bn1: BatchNorm,
    /// Stem ReLU.
    pub relu: Relu,
    /// 3x3 stride-2 max pool.
    pub maxpool: MaxPool2d,
    /// Stage 1 blocks.
    pub layer1: Vec<Block>,
    /// Stage 2 blocks.
    pub layer2: Vec<Block>,
    /// Stage 3 blocks.
    pub layer3: Vec<Block>,
    /// Stage 4 blocks.
    pub layer4: Vec<Block>,
    /// Global average pool.
    pub avgpool: AdaptiveAvgPool2d,
    /// Classifier.
    pub fc: Linear,
}

/// A residual block: basic (`conv1`, `conv2`) or bottleneck (`conv1`, `conv2`, `conv3`).
#[derive(Module, Debug)]
pub struct Block {
    /// First convolution (3x3 basic, 1x1 bottleneck).
    pub conv1: Conv2d,
    /// Its BatchNorm.
    pub bn1: BatchNorm,
    /// Second convolution (3x3, carries the stride).
    pub conv2: Conv2d,
    /// Its BatchNorm.
    pub bn2: BatchNorm,
    /// Third convolution (1x1 expansion), bottleneck blocks only.
    pub conv3: Option<Conv2d>,
    /// Its BatchNorm.
    pub bn3: Option<BatchNorm>,
    /// ReLU, used after each BatchNorm but the last and after the residual add.
    pub relu: Relu,
    /// Projection of the shortcut when the shape changes.
    pub downsample: Option<Downsample>,
}

/// A 1x1 convolution and BatchNorm on the shortcut (torchvision's `downsample.0` / `.1`).
#[derive(Module, Debug)]
pub struct Downsample {
    /// 1x1 strided convolution.
    pub conv: Conv2d,
    /// Its BatchNorm.
    pub bn: BatchNorm,
}

fn conv(cin: usize, cout: usize, k: usize, stride: usize, device: &Device) -> Conv2d {
    let p = k / 2;
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_bias(false)
        .init(device)
}

impl Block {
    fn new(cin: usize, width: usize, stride: usize, bottleneck: bool, device: &Device) -> Self {
        let (out, conv1, conv3) = if bottleneck {
            let out = width * 4;
            (
                out,
                conv(cin, width, 1, 1, device),
                Some(conv(width, out, 1, 1, device)),
            )
        } else {
            (width, conv(cin, width, 3, stride, device), None)
        };
        let conv2_stride = if bottleneck { stride } else { 1 };
        let downsample = (stride != 1 || cin != out).then(|| Downsample {
            conv: conv(cin, out, 1, stride, device),
            bn: BatchNormConfig::new(out).init(device),
        });
        Block {
            conv1,
            bn1: BatchNormConfig::new(width).init(device),
            conv2: conv(width, width, 3, conv2_stride, device),
            bn2: BatchNormConfig::new(width).init(device),
            bn3: conv3
                .as_ref()
                .map(|_| BatchNormConfig::new(out).init(device)),
            conv3,
            relu: Relu::new(),
            downsample,
        }
    }

    /// Runs the block.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let shortcut = match &self.downsample {
            Some(d) => d.bn.forward(d.conv.forward(x.clone())),
            None => x.clone(),
        };
        let y = self.relu.forward(self.bn1.forward(self.conv1.forward(x)));
        let y = self.bn2.forward(self.conv2.forward(y));
        let y = match (&self.conv3, &self.bn3) {
            (Some(conv3), Some(bn3)) => bn3.forward(conv3.forward(self.relu.forward(y))),
            _ => y,
        };
        self.relu.forward(y + shortcut)
    }
}

impl ResNet {
    /// torchvision's `resnet18` with Burn's default initialisation.
    pub fn resnet18(num_classes: usize, device: &Device) -> Self {
        ResNetConfig::resnet18(num_classes).init(device)
    }

    /// Runs the model: images `[N, 3, H, W]` to logits `[N, classes]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let x = self
            .relu
            .forward(self.bn1.forward(self.conv1.forward(images)));
        let mut x = self.maxpool.forward(x);
        for block in self
            .layer1
            .iter()
            .chain(&self.layer2)
            .chain(&self.layer3)
            .chain(&self.layer4)
        {
            x = block.forward(x);
        }
        self.fc.forward(self.avgpool.forward(x).flatten(1, 3))
    }

    /// Loads a torchvision state dict (`.pth`, old or new format) into this model, mapping
    /// torchvision's names to ours. Every parameter of the model must be found in the file.
    pub fn load_pytorch(mut self, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut store = PytorchStore::from_file(path)
            .with_key_remapping(r"\.downsample\.0\.", ".downsample.conv.")
            .with_key_remapping(r"\.downsample\.1\.", ".downsample.bn.");
        let result = self.load_from(&mut store).map_err(|e| Error::Weights {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if !result.missing.is_empty() || !result.errors.is_empty() {
            return Err(Error::Weights {
                path: path.to_path_buf(),
                reason: format!(
                    "missing {:?}, errors {:?}",
                    result.missing.iter().map(|(k, _)| k).collect::<Vec<_>>(),
                    result.errors
                ),
            });
        }
        Ok(self)
    }
}

impl Forward<4, 2> for ResNet {
    fn forward(&self, input: Tensor<4>) -> Tensor<2> {
        ResNet::forward(self, input)
    }
}

//! The golden ResNets (`resnet18`, `resnet_mini`): their torchvision weights and `n_eval`.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use burn_quantize::models::{ResNet, ResNetConfig};

use crate::goldens::read_json;

/// The two golden ResNets and their shapes.
pub fn configs() -> [(&'static str, ResNetConfig); 2] {
    [
        ("resnet18", ResNetConfig::resnet18(1000)),
        ("resnet_mini", ResNetConfig::resnet18(10).narrowed(4)),
    ]
}

/// A golden ResNet loaded from `<goldens>/<name>/<name>.pth`.
pub struct GoldenResNet {
    /// The model with the golden weights.
    pub model: ResNet,
    /// Its folder (`golden.json`, `golden.safetensors`).
    pub dir: PathBuf,
    /// How many of the golden images its golden logits cover.
    pub n_eval: usize,
}

impl GoldenResNet {
    /// Loads golden ResNet `name` with shape `config`.
    pub fn load(
        goldens: &Path,
        name: &str,
        config: ResNetConfig,
        device: &Device,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let dir = goldens.join(name);
        let model = config
            .init(device)
            .load_pytorch(dir.join(format!("{name}.pth")))?;
        let n_eval = read_json(&dir.join("golden.json"))?["n_eval"]
            .as_u64()
            .ok_or("n_eval")? as usize;
        Ok(GoldenResNet { model, dir, n_eval })
    }
}

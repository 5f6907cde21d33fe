//! Models used across the project, built from burn-nn modules.

pub mod efficientnet;
pub mod fashion;
pub mod mobilenet_v2;
pub mod mobilenet_v3;
mod resnet;
pub mod transformer;

pub use resnet::{Block, Downsample, ResNet, ResNetConfig};

use std::path::Path;

use burn::store::{ModuleSnapshot, PytorchStore};

use crate::{Error, Result};

/// Loads a PyTorch state dict through `store` into `model`: every parameter of the model must be
/// found in the file and every tensor of the file used (but BatchNorm's `num_batches_tracked`),
/// else it is an error that names the keys.
pub(crate) fn load_every_tensor<M: ModuleSnapshot>(
    mut model: M,
    mut store: PytorchStore,
    path: &Path,
) -> Result<M> {
    let weights_error = |reason: String| Error::Weights {
        path: path.to_path_buf(),
        reason,
    };
    let result = model
        .load_from(&mut store)
        .map_err(|e| weights_error(e.to_string()))?;
    let unused: Vec<&String> = (result.unused.iter())
        .filter(|k| !k.ends_with("num_batches_tracked"))
        .collect();
    if !result.missing.is_empty() || !unused.is_empty() || !result.errors.is_empty() {
        let missing: Vec<&String> = result.missing.iter().map(|(k, _)| k).collect();
        return Err(weights_error(format!(
            "missing {missing:?}, unused {unused:?}, errors {:?}",
            result.errors
        )));
    }
    Ok(model)
}

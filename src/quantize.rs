//! The one-call pipeline: capture, prepare, calibrate, convert.

use burn::data::dataloader::DataLoader;

use crate::capture::Forward;
use crate::graph::Graph;
use crate::prepare::{CalibrationInput, prepare};
use crate::qconfig::QConfigMap;
use crate::quantized::{QuantizedModel, convert};
use crate::{Error, Result};

/// Quantizes `model` with `qconfig`, calibrating on every batch of `loader` (PyTorch's
/// `quantize_fx`/`quantize_jit`): captures the forward on the loader's first batch, prepares
/// (BatchNorm folding, ReLU fusion, observers), calibrates with a progress bar, and converts.
///
/// ```no_run
/// use burn::data::dataloader::DataLoader;
/// use burn::prelude::*;
/// use burn_quantize::qconfig::{Engine, QConfig, QConfigMap};
/// use burn_quantize::{models::ResNet, quantize};
///
/// # fn run(model: ResNet, loader: std::sync::Arc<dyn DataLoader<Tensor<4>>>, images: Tensor<4>) -> burn_quantize::Result<()> {
/// let qconfig = QConfigMap::global(QConfig::preset(Engine::X86)).module("fc", None);
/// let qmodel = quantize(&model, &qconfig, loader.as_ref())?;
/// let logits: Tensor<2> = qmodel.forward(images); // try_forward returns a Result instead of panicking
/// # Ok(()) }
/// ```
pub fn quantize<M, O, const DI: usize, const DO: usize>(
    model: &M,
    qconfig: &QConfigMap,
    loader: &dyn DataLoader<O>,
) -> Result<QuantizedModel>
where
    M: Forward<DI, DO>,
    O: CalibrationInput<DI>,
{
    let first = loader
        .iter()
        .next()
        .ok_or_else(|| Error::Calibration("the data loader gave no batch".into()))?
        .map_err(|e| Error::Calibration(format!("the data loader failed: {e}")))?;
    let graph = Graph::capture(model, &first.calibration_input())?;
    let mut prepared = prepare(&graph, qconfig)?;
    prepared.calibrate_loader::<O, DI, DO>(loader)?;
    convert(&prepared)
}

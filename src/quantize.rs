//! The one-call pipelines: capture, prepare, calibrate, convert ([`quantize`]); capture and
//! convert for dynamic quantization ([`quantize_dynamic`]).

use burn::data::dataloader::DataLoader;

use burn::tensor::Tensor;

use crate::capture::Forward;
use crate::convert::to_dynamic_program;
use crate::graph::Graph;
use crate::prepare::{CalibrationInput, prepare};
use crate::qconfig::{DynamicConfig, QConfigMap};
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

/// Dynamically quantizes `model` (PyTorch's `quantize_dynamic`): captures its forward on
/// `sample` (any batch size; the forward is recorded by running it once), quantizes the
/// weights of its Linear layers and matmuls by a constant matrix per output feature, and
/// returns a model whose int8 layers quantize each input row when they run (see
/// [`crate::kernels::qlinear_dynamic`]); every other op runs in float through Burn. No
/// calibration data is needed. The model's report lists what runs in int8.
///
/// ```no_run
/// use burn::prelude::*;
/// use burn_quantize::models::transformer::{Encoder, bert_base};
/// use burn_quantize::{qconfig::DynamicConfig, quantize_dynamic};
///
/// # fn run(device: Device) -> burn_quantize::Result<()> {
/// let model = Encoder::new(&bert_base(2), &device);
/// let sample = Tensor::<3>::zeros([1, 128, 768], &device);
/// let qmodel = quantize_dynamic(&model, &sample, &DynamicConfig::default())?;
/// let hidden: Tensor<3> = qmodel.forward(sample);
/// println!("{}", qmodel.report());
/// # Ok(()) }
/// ```
pub fn quantize_dynamic<M, const DI: usize, const DO: usize>(
    model: &M,
    sample: &Tensor<DI>,
    config: &DynamicConfig,
) -> Result<QuantizedModel>
where
    M: Forward<DI, DO>,
{
    let graph = Graph::capture(model, sample)?;
    let (program, layers) = to_dynamic_program(&graph, &config.qconfig, &sample.device())?;
    QuantizedModel::new(program, layers)
}

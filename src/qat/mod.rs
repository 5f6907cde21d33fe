//! Quantization-aware training (PyTorch's `prepare_qat_fx`): [`prepare_qat`] turns a captured
//! graph into a [`QatModel`] that trains in float on Burn's autodiff backend with
//! [`FakeQuantize`] on every value and weight the int8 model quantizes (observers that keep
//! updating until frozen, straight-through gradients), and converts to the same
//! [`QuantizedModel`](crate::quantized::QuantizedModel) as post-training quantization.

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};

mod batch_norm;
mod convert;
mod fake_quant;
mod model;

pub use batch_norm::QatBatchNorm;
pub use fake_quant::FakeQuantize;
pub use model::{QatModel, QatParams, prepare_qat};

/// `values` as a flat trainable tensor on `device`.
fn flat_param(values: &[f32], device: &Device) -> Param<Tensor<1>> {
    let data = TensorData::new(values.to_vec(), [values.len()]);
    Param::from_tensor(Tensor::from_data(data, device))
}

/// The values of a flat tensor, read back from its device.
fn values_of(t: Tensor<1>) -> crate::Result<Vec<f32>> {
    crate::ops::float_values::<f32>(t.into_dispatch())
}

//! Quantization-aware training (PyTorch's `prepare_qat_fx`): [`prepare_qat`] turns a captured
//! graph into a [`QatModel`] that trains in float on Burn's autodiff backend with
//! [`FakeQuantize`] on every value and weight the int8 model quantizes (observers that keep
//! updating until frozen, straight-through gradients), and converts to the same
//! [`QuantizedModel`](crate::quantized::QuantizedModel) as post-training quantization.

mod batch_norm;
mod convert;
mod fake_quant;
mod model;

pub use batch_norm::QatBatchNorm;
pub use fake_quant::FakeQuantize;
pub use model::{QatModel, QatParams, prepare_qat};

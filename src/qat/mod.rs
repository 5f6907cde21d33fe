//! Quantization-aware training: [`FakeQuantize`], PyTorch's `torch.ao.quantization.FakeQuantize`
//! on Burn tensors: an observer that keeps updating while training, quantize-then-dequantize
//! in the forward, and straight-through gradients.
//!
//! Work in progress (issue 13): `prepare_qat` over a captured graph, training with a Burn
//! optimizer and `convert` of the trained model build on this piece.

mod fake_quant;

pub use fake_quant::FakeQuantize;

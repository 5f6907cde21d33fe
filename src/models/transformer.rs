//! A stack of Burn's transformer encoder layers ([`burn::nn::transformer`]: multi-head
//! attention, LayerNorm, a GELU feed-forward block, residuals), the Linear-heavy model that
//! dynamic quantization is for.
//!
//! ```no_run
//! use burn::prelude::*;
//! use burn_quantize::models::transformer::{Encoder, bert_base};
//!
//! let device = Device::flex();
//! let model = Encoder::new(&bert_base(2), &device);
//! let hidden: Tensor<3> = model.forward(Tensor::zeros([8, 128, 768], &device));
//! ```

use burn::module::Module;
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::tensor::{Device, Tensor};

use crate::capture::Forward;

/// BERT-base's encoder layer shape (768 features, 12 heads, a 3072-wide feed-forward block,
/// LayerNorm after each residual) for `n_layers` layers, without dropout.
pub fn bert_base(n_layers: usize) -> TransformerEncoderConfig {
    TransformerEncoderConfig::new(768, 3072, 12, n_layers).with_dropout(0.0)
}

/// Transformer encoder layers over `[batch, sequence, features]` inputs, without a mask.
#[derive(Module, Debug)]
pub struct Encoder {
    /// The layers.
    pub encoder: TransformerEncoder,
}

impl Encoder {
    /// An encoder with Burn's default initialization.
    pub fn new(config: &TransformerEncoderConfig, device: &Device) -> Self {
        Encoder {
            encoder: config.init(device),
        }
    }

    /// Runs every layer on `[batch, sequence, features]`.
    pub fn forward(&self, input: Tensor<3>) -> Tensor<3> {
        self.encoder.forward(TransformerEncoderInput::new(input))
    }
}

impl Forward<3, 3> for Encoder {
    fn forward(&self, input: Tensor<3>) -> Tensor<3> {
        Encoder::forward(self, input)
    }
}

//! Quantization configuration: what observes activations and weights ([`QConfig`]), PyTorch's
//! presets ([`Engine`]), and which part of a model gets which ([`QConfigMap`]).

mod map;

use serde::{Deserialize, Serialize};

use crate::observe::ObserverConfig;

pub use map::QConfigMap;

/// How one part of a model is quantized: the observer for its activations and the one for its
/// weights (PyTorch's `QConfig`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QConfig {
    /// Observes activations (u8, affine).
    pub activation: ObserverConfig,
    /// Observes weights (i8, symmetric; per output channel or per tensor).
    pub weight: ObserverConfig,
}

/// PyTorch's quantization engines, naming their default configurations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Engine {
    /// `fbgemm`: histogram activations with `reduce_range`, per-channel symmetric weights.
    Fbgemm,
    /// `x86` (PyTorch's default since 2.0): the same observers as `fbgemm`.
    X86,
    /// `qnnpack` (ARM): histogram activations on the full u8 range, per-tensor symmetric weights.
    Qnnpack,
    /// This crate's kernels: histogram activations on the full u8 range, per-channel symmetric
    /// weights. `fbgemm` and `x86` quantize activations to 7 bits (`reduce_range`) because
    /// AVX2's `vpmaddubsw` saturates its pair sums; every path of this crate's kernels
    /// accumulates exactly, so the eighth bit is free precision. (Speed differs on AVX2-only
    /// CPUs: there 7-bit activations run a `vpmaddubsw` kernel, ~1.3x faster on ResNet-18.)
    Native,
}

impl QConfig {
    /// PyTorch's `get_default_qconfig(engine)` (and this crate's own [`Engine::Native`]).
    pub fn preset(engine: Engine) -> Self {
        match engine {
            Engine::Fbgemm | Engine::X86 => QConfig {
                activation: ObserverConfig::histogram(true),
                weight: ObserverConfig::per_channel_symmetric_weight(),
            },
            Engine::Native => QConfig {
                activation: ObserverConfig::histogram(false),
                weight: ObserverConfig::per_channel_symmetric_weight(),
            },
            Engine::Qnnpack => QConfig {
                activation: ObserverConfig::histogram(false),
                weight: ObserverConfig::min_max_weight(),
            },
        }
    }

    /// The same weights with 16-bit activations (W8A16, [`ObserverConfig::min_max_16`]): the
    /// node's output is held as `u16`, and a conv or linear layer reading it reads 16 bits.
    /// Where a value cannot be 16-bit (an op without 16-bit kernels reads or makes it), it
    /// stays 8-bit and the report says so.
    pub fn with_16bit_activations(self) -> Self {
        QConfig {
            activation: ObserverConfig::min_max_16(),
            ..self
        }
    }
}

/// PyTorch's `get_default_qconfig(engine)`, the same as [`QConfig::preset`].
pub fn default_qconfig(engine: Engine) -> QConfig {
    QConfig::preset(engine)
}

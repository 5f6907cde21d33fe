//! Quantization configuration: what observes activations and weights ([`QConfig`]), PyTorch's
//! presets ([`Engine`]), and which part of a model gets which ([`QConfigMap`]).

mod map;

use serde::{Deserialize, Serialize};

use crate::observe::ObserverConfig;

pub use map::QConfigMap;

/// What dynamic quantization ([`crate::quantize_dynamic`], PyTorch's `quantize_dynamic`)
/// makes int8: the Linear layers and matmuls by a constant matrix that [`Self::qconfig`] maps
/// to a [`QConfig`], whose weights its weight observer quantizes (8-bit, symmetric); a node
/// mapped to `None` stays float. Activation observers are not used: each input row is
/// quantized when the layer runs.
#[derive(Clone, Debug)]
pub struct DynamicConfig {
    /// Which nodes become int8 and how their weights are observed.
    pub qconfig: QConfigMap,
}

impl DynamicConfig {
    /// Dynamic quantization of the nodes `qconfig` maps to a [`QConfig`].
    pub fn new(qconfig: QConfigMap) -> Self {
        DynamicConfig { qconfig }
    }
}

impl Default for DynamicConfig {
    /// Every linear node, with per-output-channel symmetric int8 weights (PyTorch's
    /// `default_dynamic_qconfig` weights on x86).
    fn default() -> Self {
        DynamicConfig::new(QConfigMap::global(QConfig::preset(Engine::X86)))
    }
}

/// How one part of a model is quantized: the observer for its activations and the one for its
/// weights (PyTorch's `QConfig`), and optionally another for the inputs it quantizes itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QConfig {
    /// Observes activations (u8, affine).
    pub activation: ObserverConfig,
    /// Observes weights (i8, symmetric; per output channel or per tensor).
    pub weight: ObserverConfig,
    /// Observes the inputs no other quantized node makes (model inputs, outputs of float
    /// nodes), which this node quantizes; `None`: the `activation` observer.
    #[serde(default)]
    pub input: Option<ObserverConfig>,
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
                input: None,
            },
            Engine::Native => QConfig {
                activation: ObserverConfig::histogram(false),
                weight: ObserverConfig::per_channel_symmetric_weight(),
                input: None,
            },
            Engine::Qnnpack => QConfig {
                activation: ObserverConfig::histogram(false),
                weight: ObserverConfig::min_max_weight(),
                input: None,
            },
        }
    }

    /// PyTorch's `get_default_qat_qconfig(engine)` for quantization-aware training
    /// ([`crate::qat`]): moving-average min/max activations (`reduce_range` for `fbgemm` and
    /// `x86`), per-channel symmetric weights (per-tensor for `qnnpack`). The weights are
    /// observed afresh at every step (PyTorch averages them over steps; they change little).
    pub fn qat_preset(engine: Engine) -> Self {
        let reduce_range = matches!(engine, Engine::Fbgemm | Engine::X86);
        QConfig {
            activation: ObserverConfig::moving_average_min_max(reduce_range),
            ..QConfig::preset(engine)
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

    /// The same activations with 16-bit weights (W16,
    /// [`ObserverConfig::per_channel_symmetric_weight_16`]): a conv or linear layer runs on the
    /// wide kernels whatever its activations' widths. For layers whose weight rounding, not
    /// their activations, limits them (a first convolution on smooth images, whose filters
    /// cancel most of what they sum). With 16-bit activations 16-bit weights are slow (one
    /// pair per `i32` block); [`with_12bit_weights`](Self::with_12bit_weights) is not.
    pub fn with_16bit_weights(self) -> Self {
        QConfig {
            weight: ObserverConfig::per_channel_symmetric_weight_16(),
            ..self
        }
    }

    /// The same activations with 12-bit weights (W12,
    /// [`ObserverConfig::per_channel_symmetric_weight_12`]), on the wide kernels.
    pub fn with_12bit_weights(self) -> Self {
        QConfig {
            weight: ObserverConfig::per_channel_symmetric_weight_12(),
            ..self
        }
    }

    /// The same, reading at 16 bits the inputs it quantizes from float (a model input):
    /// the node's output keeps the `activation` observer.
    pub fn with_16bit_input(self) -> Self {
        QConfig {
            input: Some(ObserverConfig::min_max_16()),
            ..self
        }
    }
}

/// PyTorch's `get_default_qconfig(engine)`, the same as [`QConfig::preset`].
pub fn default_qconfig(engine: Engine) -> QConfig {
    QConfig::preset(engine)
}

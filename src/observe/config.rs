//! What an observer is: its kind, its quantized type and scheme, with constructors for PyTorch's
//! defaults.

use serde::{Deserialize, Serialize};

use super::Observer;
use super::entropy::EntropyRange;
use super::histogram_based::HistogramBasedObserver;
use super::l2_search::L2Search;
use super::min_max::MinMaxObserver;
use super::per_channel::PerChannelMinMaxObserver;
use super::percentile::PercentileRange;
use crate::{Error, Result};

/// PyTorch's `HistogramObserver` default bin count (also used by the percentile and entropy
/// observers).
pub const DEFAULT_BINS: usize = 2048;

/// PyTorch's `MovingAverageMinMaxObserver` default averaging constant.
pub const DEFAULT_AVERAGING_CONSTANT: f32 = 0.01;

/// The default percentile of [`ObserverConfig::percentile`] callers usually pick.
pub const DEFAULT_PERCENTILE: f64 = 99.99;

/// A quantized 8-bit integer type (PyTorch's `torch.quint8` / `torch.qint8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum QDType {
    /// Unsigned: quantized range 0..=255 (0..=127 with `reduce_range`).
    QUInt8,
    /// Signed: quantized range -128..=127 (-64..=63 with `reduce_range`).
    QInt8,
    /// Unsigned 16-bit (activations of W8A16 layers): 0..=65535 (0..=32767 with
    /// `reduce_range`).
    QUInt16,
    /// Signed 16-bit (weights of W16 layers), narrow and symmetric: -32767..=32767
    /// (-16383..=16383 with `reduce_range`), so that no weight is -32768 and the wide kernels'
    /// pair sums of 16-bit activations times weights fit `i32`.
    QInt16,
    /// Signed 12-bit (weights of W12 layers, held as `i16`), narrow and symmetric:
    /// -2047..=2047 (-1023..=1023 with `reduce_range`): 16 times finer than `QInt8`, and with
    /// 16-bit activations the wide kernels sum 16 pairs per `i32` block (`QInt16`: 1).
    QInt12,
}

impl QDType {
    /// `(quant_min, quant_max)` as PyTorch's `calculate_qmin_qmax` gives them for the default
    /// 8-bit range: `reduce_range` drops one bit (x86's `vpmaddubsw` overflow guard).
    pub fn quant_range(self, reduce_range: bool) -> (i32, i32) {
        match (self, reduce_range) {
            (QDType::QUInt8, false) => (0, 255),
            (QDType::QUInt8, true) => (0, 127),
            (QDType::QInt8, false) => (-128, 127),
            (QDType::QInt8, true) => (-64, 63),
            (QDType::QUInt16, false) => (0, 65535),
            (QDType::QUInt16, true) => (0, 32767),
            (QDType::QInt16, false) => (-32767, 32767),
            (QDType::QInt16, true) => (-16383, 16383),
            (QDType::QInt12, false) => (-2047, 2047),
            (QDType::QInt12, true) => (-1023, 1023),
        }
    }
}

/// How the float range maps onto the quantized one (PyTorch's `torch.qscheme`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum QScheme {
    /// One scale and zero point for the tensor; the range [min, max] (widened to include 0) maps
    /// onto the whole quantized range.
    PerTensorAffine,
    /// One scale for the tensor, symmetric around 0 (zero point 0 for `QInt8`, 128 for `QUInt8`).
    PerTensorSymmetric,
    /// Affine, one scale and zero point per index along `axis`.
    PerChannelAffine {
        /// The channel axis (0 = output channels of a conv or linear weight).
        axis: usize,
    },
    /// Symmetric, one scale per index along `axis`.
    PerChannelSymmetric {
        /// The channel axis (0 = output channels of a conv or linear weight).
        axis: usize,
    },
}

impl QScheme {
    /// Whether the scheme is symmetric around 0.
    pub fn is_symmetric(self) -> bool {
        matches!(
            self,
            QScheme::PerTensorSymmetric | QScheme::PerChannelSymmetric { .. }
        )
    }

    /// The channel axis of a per-channel scheme, `None` for per-tensor ones.
    pub fn axis(self) -> Option<usize> {
        match self {
            QScheme::PerChannelAffine { axis } | QScheme::PerChannelSymmetric { axis } => {
                Some(axis)
            }
            QScheme::PerTensorAffine | QScheme::PerTensorSymmetric => None,
        }
    }
}

/// Which statistic an observer keeps and how it turns it into a range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ObserverKind {
    /// Running min and max (PyTorch's `MinMaxObserver`).
    MinMax,
    /// Moving averages of every batch's min and max (PyTorch's `MovingAverageMinMaxObserver`):
    /// `m += averaging_constant * (batch_m - m)` after the first batch.
    MovingAverageMinMax {
        /// The weight of a new batch, in (0, 1]; PyTorch's default is 0.01.
        averaging_constant: f32,
    },
    /// Running min and max of every channel (PyTorch's `PerChannelMinMaxObserver`); needs a
    /// per-channel [`QScheme`], whose axis it uses.
    PerChannelMinMax,
    /// A running histogram and PyTorch's L2 range search (`HistogramObserver`).
    Histogram {
        /// Histogram bins; PyTorch's default is 2048.
        bins: usize,
    },
    /// The range holding the central `percentile` % of the values, read off a running histogram
    /// (ONNX Runtime's percentile calibration; PyTorch has none).
    Percentile {
        /// How much of the data the range keeps, in (0, 100], e.g. 99.99.
        percentile: f64,
        /// Histogram bins, e.g. 2048.
        bins: usize,
    },
    /// The clip threshold that minimises the KL divergence between the observed distribution and
    /// its quantized version (TensorRT's entropy calibration; PyTorch has none).
    Entropy {
        /// Histogram bins of |x|; TensorRT uses 2048.
        bins: usize,
    },
}

/// Everything that defines an observer. Build it with [`ObserverConfig::build`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObserverConfig {
    /// The statistic and range method.
    pub kind: ObserverKind,
    /// The quantized type.
    pub dtype: QDType,
    /// Per tensor or per channel, affine or symmetric.
    pub scheme: QScheme,
    /// Use one bit less of the quantized range (PyTorch's `reduce_range`).
    pub reduce_range: bool,
}

impl ObserverConfig {
    fn activation(kind: ObserverKind, reduce_range: bool) -> Self {
        ObserverConfig {
            kind,
            dtype: QDType::QUInt8,
            scheme: QScheme::PerTensorAffine,
            reduce_range,
        }
    }

    /// `MinMaxObserver(reduce_range=…)`: u8, per-tensor affine.
    pub fn min_max(reduce_range: bool) -> Self {
        Self::activation(ObserverKind::MinMax, reduce_range)
    }

    /// A MinMax observer for 16-bit activations (W8A16): `u16`, per-tensor affine, the full
    /// range. With 65,536 levels clipping outliers buys little, so the range is the data's.
    pub fn min_max_16() -> Self {
        ObserverConfig {
            dtype: QDType::QUInt16,
            ..Self::min_max(false)
        }
    }

    /// `MovingAverageMinMaxObserver(reduce_range=…)`: u8, per-tensor affine, averaging constant
    /// 0.01.
    pub fn moving_average_min_max(reduce_range: bool) -> Self {
        let kind = ObserverKind::MovingAverageMinMax {
            averaging_constant: DEFAULT_AVERAGING_CONSTANT,
        };
        Self::activation(kind, reduce_range)
    }

    /// `HistogramObserver(reduce_range=…)`: u8, per-tensor affine, 2048 bins (the activation
    /// observer of PyTorch's `fbgemm`/`x86` (`reduce_range=True`) and `qnnpack` (`False`) qconfigs).
    pub fn histogram(reduce_range: bool) -> Self {
        Self::activation(ObserverKind::Histogram { bins: DEFAULT_BINS }, reduce_range)
    }

    /// A percentile observer for activations: u8, per-tensor affine, 2048 bins, keeping the
    /// central `percentile` % of the values (e.g. [`DEFAULT_PERCENTILE`]).
    pub fn percentile(percentile: f64, reduce_range: bool) -> Self {
        Self::activation(
            ObserverKind::Percentile {
                percentile,
                bins: DEFAULT_BINS,
            },
            reduce_range,
        )
    }

    /// An entropy (KL) observer for activations: u8, per-tensor affine, 2048 bins.
    pub fn entropy(reduce_range: bool) -> Self {
        Self::activation(ObserverKind::Entropy { bins: DEFAULT_BINS }, reduce_range)
    }

    /// PyTorch's `default_weight_observer`: `MinMaxObserver(dtype=qint8,
    /// qscheme=per_tensor_symmetric)`.
    pub fn min_max_weight() -> Self {
        ObserverConfig {
            kind: ObserverKind::MinMax,
            dtype: QDType::QInt8,
            scheme: QScheme::PerTensorSymmetric,
            reduce_range: false,
        }
    }

    /// PyTorch's `default_per_channel_weight_observer`: `PerChannelMinMaxObserver(dtype=qint8,
    /// qscheme=per_channel_symmetric, ch_axis=0)`.
    pub fn per_channel_symmetric_weight() -> Self {
        ObserverConfig {
            kind: ObserverKind::PerChannelMinMax,
            dtype: QDType::QInt8,
            scheme: QScheme::PerChannelSymmetric { axis: 0 },
            reduce_range: false,
        }
    }

    /// Per-channel symmetric 16-bit weights ([`QDType::QInt16`], W16): 256 times finer than
    /// [`per_channel_symmetric_weight`](Self::per_channel_symmetric_weight), for a layer whose
    /// output cancels much of what its weights sum (a first convolution on smooth images).
    pub fn per_channel_symmetric_weight_16() -> Self {
        ObserverConfig {
            dtype: QDType::QInt16,
            ..Self::per_channel_symmetric_weight()
        }
    }

    /// Per-channel symmetric 12-bit weights ([`QDType::QInt12`], W12): 16 times finer than
    /// 8 bits, and much faster than 16 bits with 16-bit activations.
    pub fn per_channel_symmetric_weight_12() -> Self {
        ObserverConfig {
            dtype: QDType::QInt12,
            ..Self::per_channel_symmetric_weight()
        }
    }

    /// `(quant_min, quant_max)` of this observer's quantized range.
    pub fn quant_range(&self) -> (i32, i32) {
        self.dtype.quant_range(self.reduce_range)
    }

    /// Checks the combination, with the errors PyTorch's constructors raise: a per-channel kind
    /// needs a per-channel scheme and the others a per-tensor one; symmetric u8 cannot use
    /// `reduce_range`; bins, percentile and averaging constant must be in range.
    pub fn validate(&self) -> Result<()> {
        let invalid = |why: &str| Err(Error::InvalidArgument(format!("observer {self:?}: {why}")));
        let per_channel = self.scheme.axis().is_some();
        let wants_per_channel = self.kind == ObserverKind::PerChannelMinMax;
        if per_channel != wants_per_channel {
            return invalid(if wants_per_channel {
                "PerChannelMinMax needs a per-channel scheme"
            } else {
                "only PerChannelMinMax takes a per-channel scheme"
            });
        }
        if self.scheme.is_symmetric() && self.reduce_range && self.dtype == QDType::QUInt8 {
            return invalid("cannot reduce range for symmetric quantization for quint8");
        }
        if self.dtype == QDType::QUInt16 && matches!(self.kind, ObserverKind::Histogram { .. }) {
            return invalid(
                "the histogram's L2 search models 256 levels; 16-bit activations take MinMax, \
                 MovingAverageMinMax, Percentile or Entropy",
            );
        }
        match self.kind {
            ObserverKind::MovingAverageMinMax {
                averaging_constant: c,
            } if !(c > 0.0 && c <= 1.0) => invalid("the averaging constant must be in (0, 1]"),
            ObserverKind::Percentile { percentile: p, .. } if !(p > 0.0 && p <= 100.0) => {
                invalid("the percentile must be in (0, 100]")
            }
            ObserverKind::Histogram { bins } | ObserverKind::Percentile { bins, .. }
                if bins == 0 =>
            {
                invalid("the histogram needs at least one bin")
            }
            ObserverKind::Entropy { bins } if bins < EntropyRange::levels(self) => {
                invalid("the entropy histogram needs at least as many bins as quantization levels")
            }
            _ => Ok(()),
        }
    }

    /// Makes a fresh observer, after [`validate`](Self::validate).
    pub fn build(&self) -> Result<Box<dyn Observer>> {
        self.validate()?;
        let config = self.clone();
        Ok(match self.kind {
            ObserverKind::MinMax | ObserverKind::MovingAverageMinMax { .. } => {
                Box::new(MinMaxObserver::new(config))
            }
            ObserverKind::PerChannelMinMax => Box::new(PerChannelMinMaxObserver::new(config)),
            ObserverKind::Histogram { bins } => {
                Box::new(HistogramBasedObserver::new(config, bins, L2Search))
            }
            ObserverKind::Percentile { percentile, bins } => {
                let rule = PercentileRange::new(&config, percentile);
                Box::new(HistogramBasedObserver::new(config, bins, rule))
            }
            ObserverKind::Entropy { bins } => {
                let rule = EntropyRange::new(&config);
                Box::new(HistogramBasedObserver::new(config, bins, rule))
            }
        })
    }
}

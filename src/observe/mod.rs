//! Observers: they watch the float values flowing through a model during calibration and turn
//! what they saw into quantization parameters (scale and zero point).
//!
//! [`ObserverConfig`] says what to observe and how ([`ObserverKind`], [`QDType`], [`QScheme`],
//! `reduce_range`); [`ObserverConfig::build`] makes the [`Observer`]. The kinds:
//!
//! | kind | PyTorch counterpart | range it quantizes |
//! |---|---|---|
//! | [`ObserverKind::MinMax`] | `MinMaxObserver` | running min / max |
//! | [`ObserverKind::MovingAverageMinMax`] | `MovingAverageMinMaxObserver` | moving averages of batch min / max |
//! | [`ObserverKind::PerChannelMinMax`] | `PerChannelMinMaxObserver` | min / max of every channel along an axis |
//! | [`ObserverKind::Histogram`] | `HistogramObserver` | the L2-optimal range found on a 2048-bin running histogram |
//! | [`ObserverKind::Percentile`] | none (ONNX Runtime's percentile calibration) | a central percentile of a running histogram |
//! | [`ObserverKind::Entropy`] | none (TensorRT's entropy calibration) | the clip threshold minimising KL divergence |
//!
//! The first four reproduce PyTorch's `torch/ao/quantization/observer.py` bit for bit: every
//! arithmetic step is done in `f32` where PyTorch computes on `float32` tensors and in `f64` where
//! it uses Python floats, and the tensor kernels whose rounding matters (`torch.histc`,
//! `torch.linspace`, `torch.sum`, `torch.cumsum`, floor division) are emulated exactly (see
//! [`calculate_qparams`] and the `conformance -- observers` example, which checks them against
//! PyTorch's own results).
//!
//! Histogram-based observers hold a fixed number of bins however much data flows through them:
//! when a batch widens the observed range, the old histogram is re-binned onto the new range the
//! way PyTorch's `HistogramObserver` does it.

mod config;
mod entropy;
mod frozen;
mod histc;
mod histogram;
mod histogram_based;
mod l2_search;
mod min_max;
mod per_channel;
mod percentile;
mod qparams;
mod scan;
mod torch_math;

pub use config::{
    DEFAULT_AVERAGING_CONSTANT, DEFAULT_BINS, DEFAULT_PERCENTILE, ObserverConfig, ObserverKind,
    QDType, QScheme,
};
pub(crate) use frozen::FrozenObserver;
pub use qparams::{QParams, calculate_qparams};

/// Something that records values during calibration and computes quantization parameters from
/// them (PyTorch's `ObserverBase`: `forward` is [`Observer::observe`], `calculate_qparams` is
/// [`Observer::qparams`]).
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// Records one batch: `values` is the tensor in row-major order and `shape` its shape
    /// (per-channel observers use their axis of it).
    ///
    /// An empty batch is ignored, as PyTorch does. A NaN or infinite value gives
    /// [`Error::NonFinite`](crate::Error::NonFinite), a `shape` that does not match
    /// `values.len()` (or lacks the channel axis, or changes the channel count) gives
    /// [`Error::Shape`](crate::Error::Shape); either way the observer is left unchanged.
    fn observe(&mut self, values: &[f32], shape: &[usize]) -> crate::Result<()>;

    /// The quantization parameters from what was observed (PyTorch's `calculate_qparams`).
    /// Before any data, scale 1 and zero point 0 (PyTorch's default).
    fn qparams(&self) -> crate::Result<QParams>;

    /// The (min, max) observed so far, one pair per channel for per-channel observers and one
    /// for the others; `(+inf, -inf)` before any data. For the moving-average observer these are
    /// the averaged values.
    fn min_max(&self) -> Vec<(f32, f32)>;

    /// The configuration this observer was built from.
    fn config(&self) -> &ObserverConfig;
}

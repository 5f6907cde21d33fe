//! Percentile calibration (PyTorch has none): the range that keeps the central `p` % of the
//! observed values, read off a running histogram.
//!
//! The convention is ONNX Runtime's `HistogramCollector.compute_percentile`
//! (`onnxruntime/python/tools/quantization/calibrate.py`): symmetric schemes histogram `|x|` and
//! clip at its `p`-th percentile; affine schemes histogram `x` and cut `(100 − p) / 2` % from each
//! tail. The bounds are bin edges taken outward (the lower edge of the bin where the lower cut
//! falls, the upper edge of the bin where the upper one does), so `p = 100` gives exactly the
//! observed min and max.

use super::ObserverConfig;
use super::histogram_based::{RangeRule, TrackedHistogram};

/// The percentile rule.
#[derive(Debug)]
pub(crate) struct PercentileRange {
    percentile: f64,
    symmetric: bool,
}

impl PercentileRange {
    pub(crate) fn new(config: &ObserverConfig, percentile: f64) -> Self {
        PercentileRange {
            percentile,
            symmetric: config.scheme.is_symmetric(),
        }
    }
}

impl RangeRule for PercentileRange {
    const NAME: &'static str = "percentile observer";

    fn magnitude(&self) -> bool {
        self.symmetric
    }

    fn range(&self, tracked: &TrackedHistogram) -> (f32, f32) {
        if !tracked.has_spread() {
            return tracked.min_max();
        }
        let counts = tracked.histogram().counts();
        let total: f64 = counts.iter().map(|&c| f64::from(c)).sum();
        let tails = if self.symmetric { 1.0 } else { 2.0 };
        let cut = (100.0 - self.percentile) / (100.0 * tails) * total;
        let mut below = 0.0f64;
        let (mut first, mut last) = (None, counts.len() - 1);
        for (i, &count) in counts.iter().enumerate() {
            below += f64::from(count);
            if first.is_none() && below > cut {
                first = Some(i);
            }
            if below >= total - cut {
                last = i;
                break;
            }
        }
        let upper = tracked.edge(last + 1);
        if self.symmetric {
            tracked.clipped(-upper, upper)
        } else {
            tracked.clipped(tracked.edge(first.unwrap_or(0)), upper)
        }
    }
}

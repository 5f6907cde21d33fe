//! What the histogram-based observers (histogram, percentile, entropy) share: the batch checks,
//! the signed min and max, a running histogram of the values (or of their magnitudes), and an
//! [`Observer`] whose qparams come from a [`RangeRule`] applied to them.

use super::histogram::RunningHistogram;
use super::scan::{check_shape, finite_min_max};
use super::{Observer, ObserverConfig, QParams};
use crate::Result;

/// How a histogram-based observer turns what it tracked into the range it quantizes.
pub(crate) trait RangeRule: Send + Sync + std::fmt::Debug {
    /// Names the observer in error messages.
    const NAME: &'static str;

    /// Whether the histogram is of `|x|` over `[0, max |x|]` rather than of `x` over
    /// `[min, max]`.
    fn magnitude(&self) -> bool;

    /// The `(min, max)` to quantize; only called once data was observed.
    fn range(&self, tracked: &TrackedHistogram) -> (f32, f32);
}

/// A running histogram plus the signed range of everything observed.
#[derive(Debug)]
pub(crate) struct TrackedHistogram {
    hist: RunningHistogram,
    magnitude: bool,
    min: f32,
    max: f32,
}

impl TrackedHistogram {
    /// The histogram.
    pub(crate) fn histogram(&self) -> &RunningHistogram {
        &self.hist
    }

    /// The signed `(min, max)` observed; `(+inf, -inf)` before any data.
    pub(crate) fn min_max(&self) -> (f32, f32) {
        (self.min, self.max)
    }

    /// The observed range clipped to `[lo, hi]`.
    pub(crate) fn clipped(&self, lo: f32, hi: f32) -> (f32, f32) {
        (self.min.max(lo), self.max.min(hi))
    }

    /// Whether the histogram's bins have non-zero width (the data was not all one value).
    pub(crate) fn has_spread(&self) -> bool {
        let (lo, hi) = self.hist.range();
        lo < hi
    }

    /// The lower edge of histogram bin `i` (`i = bins` gives the upper end of the range).
    pub(crate) fn edge(&self, i: usize) -> f32 {
        let (lo, hi) = self.hist.range();
        let bins = self.hist.counts().len() as f64;
        (f64::from(lo) + (f64::from(hi) - f64::from(lo)) * i as f64 / bins) as f32
    }
}

/// An observer keeping a [`TrackedHistogram`], with qparams from its rule `R`.
#[derive(Debug)]
pub(crate) struct HistogramBasedObserver<R> {
    config: ObserverConfig,
    tracked: TrackedHistogram,
    rule: R,
}

impl<R: RangeRule> HistogramBasedObserver<R> {
    pub(crate) fn new(config: ObserverConfig, bins: usize, rule: R) -> Self {
        let tracked = TrackedHistogram {
            hist: RunningHistogram::new(bins),
            magnitude: rule.magnitude(),
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
        };
        HistogramBasedObserver {
            config,
            tracked,
            rule,
        }
    }
}

impl<R: RangeRule> Observer for HistogramBasedObserver<R> {
    fn observe(&mut self, values: &[f32], shape: &[usize]) -> Result<()> {
        check_shape(values, shape, R::NAME)?;
        if values.is_empty() {
            return Ok(());
        }
        let (min, max) = finite_min_max(values, R::NAME)?;
        let tracked = &mut self.tracked;
        (tracked.min, tracked.max) = (min.min(tracked.min), max.max(tracked.max));
        if tracked.magnitude {
            tracked
                .hist
                .add(values, 0.0, max.abs().max(min.abs()), f32::abs);
        } else {
            tracked.hist.add(values, min, max, |v| v);
        }
        Ok(())
    }

    fn qparams(&self) -> Result<QParams> {
        let range = if self.tracked.hist.is_empty() {
            self.tracked.min_max()
        } else {
            self.rule.range(&self.tracked)
        };
        QParams::from_ranges(&self.config, &[range])
    }

    fn min_max(&self) -> Vec<(f32, f32)> {
        vec![self.tracked.min_max()]
    }

    fn config(&self) -> &ObserverConfig {
        &self.config
    }
}

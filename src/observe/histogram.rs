//! The running histogram of PyTorch's `HistogramObserver.forward`: a fixed number of `f32` bins
//! over `[min, max]`; a batch that widens the range re-bins the old histogram onto the new one
//! (`_combine_histograms` / `_upscale_histogram`), so memory stays constant however much data
//! flows through.

use super::histc::histc;
use super::torch_math::{self, Linspace};

/// PyTorch's `HistogramObserver.upsample_rate`: each old bin is split into this many pieces
/// before the pieces are re-binned.
const UPSAMPLE_RATE: usize = 16;

/// Bins over `[min, max]`; `min = +inf`, `max = -inf` before any data.
#[derive(Clone, Debug)]
pub(crate) struct RunningHistogram {
    counts: Vec<f32>,
    min: f32,
    max: f32,
}

impl RunningHistogram {
    pub(crate) fn new(bins: usize) -> Self {
        RunningHistogram {
            counts: vec![0.0; bins],
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
        }
    }

    /// Whether nothing was recorded yet.
    pub(crate) fn is_empty(&self) -> bool {
        self.min == f32::INFINITY || self.max == f32::NEG_INFINITY
    }

    /// The bin counts.
    pub(crate) fn counts(&self) -> &[f32] {
        &self.counts
    }

    /// The range the bins cover.
    pub(crate) fn range(&self) -> (f32, f32) {
        (self.min, self.max)
    }

    /// Records a batch whose mapped values (`map(v)` for every `v`) lie in `[lo, hi]`, as
    /// `HistogramObserver.forward` does with `lo, hi = torch.aminmax(x)`.
    pub(crate) fn add<M>(&mut self, values: &[f32], lo: f32, hi: f32, map: M)
    where
        M: Fn(f32) -> f32 + Sync,
    {
        let bins = self.counts.len();
        if self.is_empty() {
            (self.min, self.max) = (lo, hi);
            self.counts = histc(values, bins, lo, hi, map);
            return;
        }
        let (new_min, new_max) = (lo.min(self.min), hi.max(self.max));
        let update = histc(values, bins, new_min, new_max, map);
        if new_min == self.min && new_max == self.max {
            self.counts
                .iter_mut()
                .zip(update)
                .for_each(|(c, u)| *c += u);
        } else {
            self.counts = self.combine(update, new_min, new_max);
            (self.min, self.max) = (new_min, new_max);
        }
    }

    /// `_combine_histograms`: the old counts moved onto `[new_min, new_max]`, plus `update`.
    fn combine(&self, update: Vec<f32>, new_min: f32, new_max: f32) -> Vec<f32> {
        if self.min == self.max {
            // All old values equal self.min: one bin of the new range gets all of them.
            let total = torch_math::sum(&self.counts);
            let spike = histc(&[self.min], self.counts.len(), new_min, new_max, |v| v);
            return spike
                .iter()
                .zip(update)
                .map(|(&s, u)| s * total + u)
                .collect();
        }
        let transformed = self.upscale(new_min, new_max);
        update
            .iter()
            .zip(transformed)
            .map(|(&u, t)| u + t)
            .collect()
    }

    /// `_upscale_histogram`: every old bin is split into `UPSAMPLE_RATE` equal pieces, and each
    /// piece goes, whole, into the new bin holding its midpoint (`torch.bucketize(…, right=True)`
    /// on the new bin edges, then `torch.bincount` with the pieces as `f32` weights).
    fn upscale(&self, new_min: f32, new_max: f32) -> Vec<f32> {
        let bins = self.counts.len();
        let pieces = bins * UPSAMPLE_RATE;
        let rate = UPSAMPLE_RATE as f32;
        let half_piece = 0.5 * ((self.max - self.min) / pieces as f32);
        let old_edges = Linspace::new(self.min, self.max, pieces + 1);
        let new_space = Linspace::new(new_min, new_max, bins + 1);
        let new_edges: Vec<f32> = (0..=bins).map(|i| new_space.at(i)).collect();
        let mut out = vec![0.0f32; bins];
        for piece in 0..pieces {
            let midpoint = old_edges.at(piece) + half_piece;
            let above = new_edges.partition_point(|&edge| edge <= midpoint);
            let bin = above.saturating_sub(1).min(bins - 1);
            out[bin] += self.counts[piece / UPSAMPLE_RATE] / rate;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_range_batches_add_up() {
        let mut hist = RunningHistogram::new(4);
        hist.add(&[0.0, 1.0, 2.0, 3.0, 4.0], 0.0, 4.0, |v| v);
        hist.add(&[0.5, 3.5], 0.5, 3.5, |v| v);
        assert_eq!(hist.counts(), &[2.0, 1.0, 1.0, 3.0]);
        assert_eq!(hist.range(), (0.0, 4.0));
    }

    #[test]
    fn widening_the_range_keeps_the_total_and_moves_mass() {
        let mut hist = RunningHistogram::new(8);
        hist.add(&[0.0, 0.5, 1.0], 0.0, 1.0, |v| v);
        hist.add(&[-3.0, 3.0], -3.0, 3.0, |v| v);
        assert_eq!(hist.range(), (-3.0, 3.0));
        assert_eq!(hist.counts().iter().sum::<f32>(), 5.0);
        // The old values (all in [0, 1]) now sit in bins 4 and 5 of [-3, 3].
        assert_eq!(hist.counts()[0] + hist.counts()[7], 2.0);
        assert_eq!(hist.counts()[4] + hist.counts()[5], 3.0);
    }

    #[test]
    fn a_constant_start_becomes_one_spike() {
        let mut hist = RunningHistogram::new(4);
        hist.add(&[2.0, 2.0], 2.0, 2.0, |v| v);
        assert_eq!(hist.range(), (2.0, 2.0));
        hist.add(&[0.0], 0.0, 0.0, |v| v);
        assert_eq!(hist.counts(), &[1.0, 0.0, 0.0, 2.0]);
    }

    #[test]
    fn memory_is_constant() {
        let mut hist = RunningHistogram::new(32);
        for batch in 0..200 {
            let scale = 1.0 + batch as f32;
            let values: Vec<f32> = (0..100).map(|i| (i as f32 - 50.0) * scale).collect();
            hist.add(&values, -50.0 * scale, 49.0 * scale, |v| v);
            assert_eq!(hist.counts().len(), 32);
        }
        assert!((hist.counts().iter().sum::<f32>() - 20_000.0).abs() < 1e-2);
    }
}

//! Entropy calibration (PyTorch has none): TensorRT's KL-divergence threshold search, as
//! described in Szymon Migacz, "8-bit Inference with TensorRT" (NVIDIA GTC 2017) and used by
//! TensorRT's `IInt8EntropyCalibrator2`, in the form of its open reference implementation,
//! MXNet's `_get_optimal_threshold` (which ONNX Runtime's and TVM's entropy calibrators follow).
//!
//! Over a 2048-bin histogram of `|x|` (bin 0 starting at 0), for every candidate `i` from the
//! number of quantized levels up to all bins:
//!
//! 1. the reference `P` is bins `0..i`, with everything beyond (the outliers the threshold
//!    clips) added to bin `i − 1`;
//! 2. the candidate `Q` is bins `0..i` merged into the quantized levels (each level `i / levels`
//!    bins, the last one taking the remainder), each level's count spread evenly over the bins
//!    that are non-empty in `P` (the others stay empty);
//! 3. both are smoothed (every empty bin gets 1e-4 counts, taken evenly from the non-empty ones,
//!    so that clipping into an empty bin is costly but not infinitely so), normalised, and
//!    `KL(P ‖ Q) = Σ p ln(p / q)` is computed.
//!
//! The `i` with the smallest divergence (the first one on ties) sets the threshold `T = i ·
//! bin_width`, the edge of the kept bins (TensorRT's slides write `(i + 0.5) · bin_width`).
//! Symmetric schemes model 128 levels per sign, as TensorRT does; affine (u8) schemes model 256
//! levels over `[0, T]`, which fits the non-negative activations they usually hold. The observed
//! range clipped to `[−T, T]` is then quantized as usual.
//!
//! As in TensorRT, the smallest candidate keeps `levels` bins, so the threshold is at least
//! `levels / bins` of the largest magnitude seen (1/16 symmetric, 1/8 affine with 2048 bins).

use rayon::prelude::*;

use super::ObserverConfig;
use super::histogram_based::{RangeRule, TrackedHistogram};

/// The entropy rule.
#[derive(Debug)]
pub(crate) struct EntropyRange {
    levels: usize,
}

impl EntropyRange {
    pub(crate) fn new(config: &ObserverConfig) -> Self {
        EntropyRange {
            levels: Self::levels(config),
        }
    }

    /// The quantized levels the candidate distributions are merged into: 128 for symmetric
    /// schemes (one sign of an 8-bit range), 256 for affine ones.
    pub(crate) fn levels(config: &ObserverConfig) -> usize {
        if config.scheme.is_symmetric() {
            128
        } else {
            256
        }
    }
}

impl RangeRule for EntropyRange {
    const NAME: &'static str = "entropy observer";

    fn magnitude(&self) -> bool {
        true
    }

    fn range(&self, tracked: &TrackedHistogram) -> (f32, f32) {
        if !tracked.has_spread() {
            return tracked.min_max();
        }
        let counts: Vec<f64> = tracked
            .histogram()
            .counts()
            .iter()
            .map(|&c| f64::from(c))
            .collect();
        let best = (self.levels..=counts.len())
            .into_par_iter()
            .map(|i| (kl_divergence(&counts, i, self.levels), i))
            .filter(|(divergence, _)| divergence.is_finite())
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        // No finite candidate (smoothing failed everywhere): keep every bin.
        let kept = best.map_or(counts.len(), |(_, i)| i);
        let threshold = tracked.edge(kept);
        tracked.clipped(-threshold, threshold)
    }
}

/// `KL(P ‖ Q)` for the threshold after `kept` bins, merged into `levels` levels (infinite when
/// smoothing cannot make `P` or `Q` a distribution).
fn kl_divergence(counts: &[f64], kept: usize, levels: usize) -> f64 {
    let mut reference = counts[..kept].to_vec();
    reference[kept - 1] += counts[kept..].iter().sum::<f64>();
    let mut candidate = vec![0.0; kept];
    let per_level = kept / levels;
    for level in 0..levels {
        let start = level * per_level;
        let stop = if level == levels - 1 {
            kept
        } else {
            start + per_level
        };
        let nonempty = reference[start..stop].iter().filter(|&&c| c != 0.0).count();
        if nonempty == 0 {
            continue;
        }
        let spread = counts[start..stop].iter().sum::<f64>() / nonempty as f64;
        for (q, &p) in candidate[start..stop]
            .iter_mut()
            .zip(&reference[start..stop])
        {
            if p != 0.0 {
                *q = spread;
            }
        }
    }
    let (Some(p), Some(q)) = (smoothed(reference), smoothed(candidate)) else {
        return f64::INFINITY;
    };
    let (p_total, q_total): (f64, f64) = (p.iter().sum(), q.iter().sum());
    p.iter()
        .zip(&q)
        .map(|(&p, &q)| (p / p_total) * ((p / p_total) / (q / q_total)).ln())
        .sum()
}

/// MXNet's `_smooth_distribution`: each empty bin gets `1e-4`, taken evenly from the non-empty
/// ones; `None` when nothing is left positive.
fn smoothed(mut counts: Vec<f64>) -> Option<Vec<f64>> {
    const EPS: f64 = 1e-4;
    let zeros = counts.iter().filter(|&&c| c == 0.0).count();
    let nonzeros = counts.len() - zeros;
    if nonzeros == 0 {
        return None;
    }
    let taken = EPS * zeros as f64 / nonzeros as f64;
    for c in &mut counts {
        *c += if *c == 0.0 { EPS } else { -taken };
    }
    counts.iter().all(|&c| c > 0.0).then_some(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_distributions_have_zero_divergence() {
        let counts = vec![4.0; 256];
        assert!(kl_divergence(&counts, 256, 128).abs() < 1e-12);
    }

    #[test]
    fn smoothing_keeps_the_total_and_fills_empty_bins() {
        let smooth = smoothed(vec![2.0, 0.0, 2.0, 0.0]).unwrap();
        assert!((smooth.iter().sum::<f64>() - 4.0).abs() < 1e-12);
        assert!(smooth.iter().all(|&c| c > 0.0));
        assert!(smoothed(vec![0.0; 3]).is_none());
    }

    #[test]
    fn clipping_mass_costs_divergence() {
        let mut counts = vec![4.0; 256];
        counts[255] = 0.0;
        counts[200] = 40.0;
        assert!(kl_divergence(&counts, 256, 128) < kl_divergence(&counts, 128, 128));
    }
}

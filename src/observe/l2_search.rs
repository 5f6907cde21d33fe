//! PyTorch's `HistogramObserver._non_linear_param_search`: narrow the histogram's range from
//! both ends, in quantile steps of 1e-5, while the L2 quantization error of the narrowed range
//! keeps falling (after caffe2's `NormMinimization::NonlinearQuantizationParamsSearch`).

use super::histogram::RunningHistogram;
use super::histogram_based::{RangeRule, TrackedHistogram};
use super::torch_math;

/// PyTorch's `dst_nbins = 2 ** torch.iinfo(dtype).bits`: the search models 256 quantized levels
/// for both 8-bit types, with or without `reduce_range`.
const DST_BINS: usize = 256;

/// The rule of PyTorch's `HistogramObserver`: histogram `x` over `[min, max]`, quantize the range
/// [`non_linear_param_search`] finds.
#[derive(Debug)]
pub(crate) struct L2Search;

impl RangeRule for L2Search {
    const NAME: &'static str = "histogram observer";

    fn magnitude(&self) -> bool {
        false
    }

    fn range(&self, tracked: &TrackedHistogram) -> (f32, f32) {
        non_linear_param_search(tracked.histogram(), DST_BINS)
    }
}

/// The `(min, max)` to quantize a non-empty histogram with, for `dst_bins` quantized levels.
fn non_linear_param_search(hist: &RunningHistogram, dst_bins: usize) -> (f32, f32) {
    let counts = hist.counts();
    let bins = counts.len();
    let (min, max) = hist.range();
    let bin_width = (max - min) / bins as f32;
    let total = f64::from(torch_math::sum(counts));
    let cumulative = torch_math::cumsum(counts);
    let mut error = QuantizationError::new(hist, dst_bins);

    let step = 1e-5;
    let (mut alpha, mut beta) = (0.0f64, 1.0f64);
    let (mut start_bin, mut end_bin) = (0usize, bins - 1);
    let mut norm_min = f64::INFINITY;
    while alpha < beta {
        let next_alpha = alpha + step;
        let next_beta = beta - step;
        // `cSum[l] < next_alpha * total` compares float32 with the Python float cast to float32.
        let (low, high) = ((next_alpha * total) as f32, (next_beta * total) as f32);
        let mut l = start_bin;
        while l < end_bin && cumulative[l] < low {
            l += 1;
        }
        let mut r = end_bin;
        while r > start_bin && cumulative[r] > high {
            r -= 1;
        }
        let (mut next_start, mut next_end) = (start_bin, end_bin);
        if l - start_bin > end_bin - r {
            next_start = l;
            alpha = next_alpha;
        } else {
            next_end = r;
            beta = next_beta;
        }
        if next_start == start_bin && next_end == end_bin {
            continue;
        }
        let norm = error.compute(next_start, next_end);
        if norm > norm_min {
            break;
        }
        norm_min = norm;
        (start_bin, end_bin) = (next_start, next_end);
    }
    (
        min + bin_width * start_bin as f32,
        min + bin_width * (end_bin + 1) as f32,
    )
}

/// `_compute_quantization_error`, with its scratch vector kept across calls.
struct QuantizationError<'a> {
    counts: &'a [f32],
    /// The source bin width as a Python float: `(max.item() - min.item()) / bins`.
    bin_width: f64,
    dst_bins: usize,
    norm: Vec<f32>,
}

impl<'a> QuantizationError<'a> {
    fn new(hist: &'a RunningHistogram, dst_bins: usize) -> Self {
        let counts = hist.counts();
        let (min, max) = hist.range();
        let bin_width = (f64::from(max) - f64::from(min)) / counts.len() as f64;
        QuantizationError {
            counts,
            bin_width,
            dst_bins,
            norm: vec![0.0; counts.len()],
        }
    }

    /// The L2 error of quantizing the histogram with the range of bins `start..=end`: every
    /// source bin's density, spread uniformly, against the centre of the destination bins it
    /// overlaps. Python floats become `f32` where they meet the `float32` tensors.
    fn compute(&mut self, start: usize, end: usize) -> f64 {
        let dst_bin_width = self.bin_width * (end - start + 1) as f64 / self.dst_bins as f64;
        if dst_bin_width == 0.0 {
            return 0.0;
        }
        let bin_width = self.bin_width as f32;
        let dst_width = dst_bin_width as f32;
        let half = (dst_bin_width / 2.0) as f32;
        let neg_half = (-dst_bin_width / 2.0) as f32;
        let neg_half_cubed = neg_half * neg_half * neg_half;
        // _get_norm(-d/2, d/2): the error of a fully covered destination bin, per unit density.
        let full_bin = (half * half * half - neg_half_cubed) / 3.0;
        let last = (self.dst_bins - 1) as f32;
        for (i, (norm, &count)) in self.norm.iter_mut().zip(self.counts).enumerate() {
            let src_begin = (i as i64 - start as i64) as f32 * bin_width;
            let src_end = src_begin + bin_width;
            let dst_of_begin = torch_math::div_floor(src_begin, dst_width).clamp(0.0, last);
            let dst_of_begin_center = (dst_of_begin + 0.5) * dst_width;
            let dst_of_end = torch_math::div_floor(src_end, dst_width).clamp(0.0, last);
            let density = count / bin_width;

            let delta_begin = src_begin - dst_of_begin_center;
            let head =
                density * ((half * half * half - delta_begin * delta_begin * delta_begin) / 3.0);
            let middle = (dst_of_end - dst_of_begin - 1.0) * (density * full_bin);
            let dst_of_end_center = dst_of_end * dst_width + half;
            let delta_end = src_end - dst_of_end_center;
            let tail = density * ((delta_end * delta_end * delta_end - neg_half_cubed) / 3.0);
            *norm = 0.0 + head + middle + tail;
        }
        f64::from(torch_math::sum(&self.norm))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram_of(values: &[f32], bins: usize) -> RunningHistogram {
        let mut hist = RunningHistogram::new(bins);
        let (lo, hi) = values
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        hist.add(values, lo, hi, |v| v);
        hist
    }

    #[test]
    fn uniform_data_keeps_its_range() {
        let values: Vec<f32> = (0..10_000).map(|i| i as f32 / 9_999.0).collect();
        let (min, max) = non_linear_param_search(&histogram_of(&values, 2048), 256);
        assert!(min.abs() < 1e-3 && (max - 1.0).abs() < 1e-3, "{min} {max}");
    }

    #[test]
    fn a_lone_outlier_is_kept_in_little_data_and_cut_in_much() {
        // One outlier in 10^4 values costs more L2 error clipped than it saves kept ...
        let uniform = |n: usize| (0..n).map(move |i| (i as f32 / (n - 1) as f32) * 2.0 - 1.0);
        let few: Vec<f32> = uniform(10_000).chain([100.0]).collect();
        let (_, max) = non_linear_param_search(&histogram_of(&few, 2048), 256);
        assert!(max > 99.0, "{max}");
        // ... but in 2·10^5 values it is under the 1e-5 quantile step and goes at once.
        let many: Vec<f32> = uniform(200_000).chain([100.0]).collect();
        let (min, max) = non_linear_param_search(&histogram_of(&many, 2048), 256);
        assert!(max < 2.0 && min <= -0.9, "{min} {max}");
    }
}

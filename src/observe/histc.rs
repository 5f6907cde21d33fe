//! `torch.histc`, bin for bin: the CPU kernel's linear-interpolation bin choice in `f32`
//! (`HistogramKernel.cpp`), with the range rules of `histc_select_outer_bin_edges`.

use rayon::prelude::*;

use super::scan::PARALLEL_CHUNK;
use super::torch_math::Linspace;

/// The outer bin edges `torch.histc(x, bins, min=lo, max=hi)` uses for a batch whose values all
/// lie in `[lo, hi]`: the first and last elements of `torch.linspace(lo, hi, bins + 1)`, where an
/// empty range `lo == hi` (every value equal) first becomes `[lo − 1, hi + 1]`, computed in `f64`
/// and rounded to the `f32` of the bin-edge tensor.
fn outer_edges(lo: f32, hi: f32, bins: usize) -> (f32, f32) {
    let (lo, hi) = if lo == hi {
        ((f64::from(lo) - 1.0) as f32, (f64::from(hi) + 1.0) as f32)
    } else {
        (lo, hi)
    };
    let edges = Linspace::new(lo, hi, bins + 1);
    (edges.at(0), edges.at(bins))
}

/// `torch.histc(map(values), bins, min=lo, max=hi)` as counts. A value goes to bin
/// `trunc((v − left)·bins / (right − left))` in `f32` (the last bin includes the right edge);
/// values outside the edges are skipped. `map` lets callers histogram `|x|` without a copy.
pub(crate) fn histc<M>(values: &[f32], bins: usize, lo: f32, hi: f32, map: M) -> Vec<f32>
where
    M: Fn(f32) -> f32 + Sync,
{
    let (left, right) = outer_edges(lo, hi, bins);
    let count = |chunk: &[f32]| -> Vec<u32> {
        let mut counts = vec![0u32; bins];
        let (width, scale) = (right - left, bins as f32);
        for &raw in chunk {
            let v = map(raw);
            if v >= left && v <= right {
                // PyTorch writes bin `bins` into the last bin; f32 rounding cannot go further.
                let pos = (((v - left) * scale / width) as usize).min(bins - 1);
                counts[pos] += 1;
            }
        }
        counts
    };
    let counts = if values.len() >= 2 * PARALLEL_CHUNK {
        values.par_chunks(PARALLEL_CHUNK).map(count).reduce(
            || vec![0u32; bins],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                a
            },
        )
    } else {
        count(values)
    };
    counts.into_iter().map(|c| c as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_are_half_open_except_the_last() {
        let counts = histc(&[0.0, 0.25, 0.5, 0.75, 1.0], 4, 0.0, 1.0, |v| v);
        assert_eq!(counts, vec![1.0, 1.0, 1.0, 2.0]);
    }

    #[test]
    fn out_of_range_values_are_skipped() {
        assert_eq!(histc(&[-1.0, 0.5, 2.0], 2, 0.0, 1.0, |v| v), vec![0.0, 1.0]);
    }

    #[test]
    fn an_empty_range_is_widened_by_one_each_side() {
        assert_eq!(outer_edges(3.0, 3.0, 4), (2.0, 4.0));
        assert_eq!(
            histc(&[3.0, 3.0], 4, 3.0, 3.0, |v| v),
            vec![0.0, 0.0, 2.0, 0.0]
        );
    }

    #[test]
    fn map_and_parallel_paths_agree_with_the_serial_count() {
        let values: Vec<f32> = (0..3 * PARALLEL_CHUNK)
            .map(|i| ((i * 7919) % 1000) as f32 - 500.0)
            .collect();
        let counts = histc(&values, 64, 0.0, 500.0, f32::abs);
        assert_eq!(counts.iter().sum::<f32>(), values.len() as f32);
        let serial: Vec<f32> = values.chunks(1000).fold(vec![0.0; 64], |mut acc, chunk| {
            acc.iter_mut()
                .zip(histc(chunk, 64, 0.0, 500.0, f32::abs))
                .for_each(|(a, c)| *a += c);
            acc
        });
        assert_eq!(counts, serial);
    }
}

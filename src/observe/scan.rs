//! One fast pass over a batch: its shape check and its finite min and max (PyTorch's
//! `torch.aminmax`), in parallel for large batches.

use rayon::prelude::*;

use crate::{Error, Result};

/// Batches at least this long are scanned in parallel, in chunks of this many values.
pub(crate) const PARALLEL_CHUNK: usize = 1 << 16;

/// Lanes of the min/max loop (lets the compiler vectorise it).
const LANES: usize = 16;

/// Checks that `values` holds a tensor of `shape`.
pub(crate) fn check_shape(values: &[f32], shape: &[usize], context: &str) -> Result<()> {
    let expected: usize = shape.iter().product();
    if expected == values.len() {
        Ok(())
    } else {
        Err(Error::Shape {
            context: context.to_string(),
            expected: format!("{expected} values for shape {shape:?}"),
            got: format!("{} values", values.len()),
        })
    }
}

/// The min and max of `values` (`(+inf, -inf)` when empty), or [`Error::NonFinite`] if one of
/// them is NaN or infinite.
pub(crate) fn finite_min_max(values: &[f32], context: &str) -> Result<(f32, f32)> {
    let (min, max, finite) = if values.len() >= 2 * PARALLEL_CHUNK {
        values
            .par_chunks(PARALLEL_CHUNK)
            .map(chunk_min_max)
            .reduce(|| (f32::INFINITY, f32::NEG_INFINITY, true), merge)
    } else {
        chunk_min_max(values)
    };
    if finite {
        Ok((min, max))
    } else {
        Err(Error::NonFinite {
            context: context.to_string(),
        })
    }
}

/// Min, max and whether every value is finite.
fn chunk_min_max(values: &[f32]) -> (f32, f32, bool) {
    let mut min = [f32::INFINITY; LANES];
    let mut max = [f32::NEG_INFINITY; LANES];
    // x · 0 is ±0 for finite x and NaN for NaN and ±inf; NaN poisons the running sum.
    let mut poison = [0.0f32; LANES];
    let mut lanes = values.chunks_exact(LANES);
    for chunk in &mut lanes {
        for k in 0..LANES {
            let v = chunk[k];
            min[k] = if v < min[k] { v } else { min[k] };
            max[k] = if v > max[k] { v } else { max[k] };
            poison[k] += v * 0.0;
        }
    }
    let mut result = (f32::INFINITY, f32::NEG_INFINITY, true);
    for k in 0..LANES {
        result = merge(result, (min[k], max[k], poison[k] == 0.0));
    }
    lanes
        .remainder()
        .iter()
        .fold(result, |acc, &v| merge(acc, (v, v, v.is_finite())))
}

fn merge(a: (f32, f32, bool), b: (f32, f32, bool)) -> (f32, f32, bool) {
    (
        if b.0 < a.0 { b.0 } else { a.0 },
        if b.1 > a.1 { b.1 } else { a.1 },
        a.2 && b.2,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_min_and_max_in_any_position() {
        let mut values: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        values[3] = -5.0;
        values[997] = 7.0;
        assert_eq!(finite_min_max(&values, "t").unwrap(), (-5.0, 7.0));
        assert_eq!(
            finite_min_max(&[], "t").unwrap(),
            (f32::INFINITY, f32::NEG_INFINITY)
        );
    }

    #[test]
    fn rejects_nan_and_infinity_anywhere() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for position in [0, 17, 999] {
                let mut values = vec![1.0f32; 1000];
                values[position] = bad;
                assert!(matches!(
                    finite_min_max(&values, "t"),
                    Err(Error::NonFinite { .. })
                ));
            }
        }
        let mut large = vec![0.5f32; 3 * PARALLEL_CHUNK];
        large[2 * PARALLEL_CHUNK + 5] = f32::NAN;
        assert!(finite_min_max(&large, "t").is_err());
    }

    #[test]
    fn shape_must_match_the_values() {
        assert!(check_shape(&[0.0; 6], &[2, 3], "t").is_ok());
        assert!(matches!(
            check_shape(&[0.0; 5], &[2, 3], "t"),
            Err(Error::Shape { .. })
        ));
    }
}

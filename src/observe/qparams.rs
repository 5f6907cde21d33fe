//! Scale and zero point from a range, exactly as PyTorch's
//! `UniformQuantizationObserverBase._calculate_qparams`.

use serde::{Deserialize, Serialize};

use super::{ObserverConfig, QDType};
use crate::{Error, Result};

/// PyTorch's `eps`: `torch.finfo(torch.float32).eps`, the smallest scale an observer gives.
const EPS: f32 = f32::EPSILON;

/// The quantization parameters of one tensor: `x ≈ scale · (q − zero_point)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QParams {
    /// One scale per channel (per-channel schemes) or one for the tensor.
    pub scale: Vec<f32>,
    /// One zero point per scale.
    pub zero_point: Vec<i32>,
    /// The quantized type.
    pub dtype: QDType,
    /// The channel axis of per-channel parameters, `None` for per-tensor ones.
    pub axis: Option<usize>,
    /// The smallest quantized value.
    pub quant_min: i32,
    /// The largest quantized value.
    pub quant_max: i32,
}

impl QParams {
    /// The parameters of `config` for the observed `(min, max)` of each channel (one pair for
    /// per-tensor observers), with PyTorch's `check_min_max_valid`: no pairs, or a per-tensor
    /// `(+inf, -inf)` (nothing observed), give PyTorch's default (scale 1, zero point 0, one
    /// entry); a pair with min > max is an error.
    pub(crate) fn from_ranges(config: &ObserverConfig, ranges: &[(f32, f32)]) -> Result<QParams> {
        let (quant_min, quant_max) = config.quant_range();
        let params = |scale, zero_point| QParams {
            scale,
            zero_point,
            dtype: config.dtype,
            axis: config.scheme.axis(),
            quant_min,
            quant_max,
        };
        let nothing_observed = match ranges {
            [] => true,
            [(min, max)] => {
                config.scheme.axis().is_none() && *min == f32::INFINITY && *max == f32::NEG_INFINITY
            }
            _ => false,
        };
        if nothing_observed {
            return Ok(params(vec![1.0], vec![0]));
        }
        if let Some((channel, (min, max))) =
            ranges.iter().enumerate().find(|(_, (min, max))| min > max)
        {
            return Err(Error::InvalidArgument(format!(
                "observer range of channel {channel}: min {min} should be less than max {max}"
            )));
        }
        let symmetric = config.scheme.is_symmetric();
        let (scale, zero_point) = ranges
            .iter()
            .map(|&(min, max)| {
                calculate_qparams(min, max, quant_min, quant_max, symmetric, config.dtype)
            })
            .unzip();
        Ok(params(scale, zero_point))
    }
}

/// Scale and zero point for the range `[min, max]`, as PyTorch's `_calculate_qparams` computes
/// them for one channel, in `f32` like its tensors:
///
/// - the range is widened to include 0: `min_neg = min(min, 0)`, `max_pos = max(max, 0)`;
/// - symmetric: `scale = max(-min_neg, max_pos) / ((quant_max - quant_min) / 2)`, zero point 128
///   for `QUInt8` and 0 for `QInt8`;
/// - affine: `scale = (max_pos - min_neg) / (quant_max - quant_min)`, zero point
///   `quant_min - round_half_even(min_neg / scale)` clamped to the quantized range;
/// - the scale is at least `f32::EPSILON`.
///
/// `(+inf, -inf)` (an observer that saw nothing) gives PyTorch's default `(1.0, 0)`. The range is
/// not otherwise checked: observers reject min > max before calling this.
pub fn calculate_qparams(
    min: f32,
    max: f32,
    quant_min: i32,
    quant_max: i32,
    symmetric: bool,
    dtype: QDType,
) -> (f32, i32) {
    if min == f32::INFINITY && max == f32::NEG_INFINITY {
        return (1.0, 0);
    }
    let min_neg = min.min(0.0);
    let max_pos = max.max(0.0);
    if symmetric {
        let half_range = (f64::from(quant_max - quant_min) / 2.0) as f32;
        let scale = ((-min_neg).max(max_pos) / half_range).max(EPS);
        let zero_point = match dtype {
            QDType::QUInt8 => 128,
            QDType::QUInt16 => 32768,
            QDType::QInt8 | QDType::QInt12 | QDType::QInt16 => 0,
        };
        (scale, zero_point)
    } else {
        let scale = ((max_pos - min_neg) / (quant_max - quant_min) as f32).max(EPS);
        let zero_point = quant_min - (min_neg / scale).round_ties_even() as i32;
        (scale, zero_point.clamp(quant_min, quant_max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{ObserverKind, QScheme};

    fn affine_u8(min: f32, max: f32, reduce_range: bool) -> (f32, i32) {
        let (lo, hi) = QDType::QUInt8.quant_range(reduce_range);
        calculate_qparams(min, max, lo, hi, false, QDType::QUInt8)
    }

    #[test]
    fn all_zeros_gives_eps_scale() {
        assert_eq!(affine_u8(0.0, 0.0, false), (f32::EPSILON, 0));
        assert_eq!(
            calculate_qparams(0.0, 0.0, -128, 127, true, QDType::QInt8),
            (f32::EPSILON, 0)
        );
        assert_eq!(
            calculate_qparams(0.0, 0.0, 0, 255, true, QDType::QUInt8),
            (f32::EPSILON, 128)
        );
    }

    #[test]
    fn constant_positive_input_includes_zero() {
        let (scale, zero_point) = affine_u8(3.0, 3.0, false);
        assert_eq!(scale, 3.0 / 255.0);
        assert_eq!(zero_point, 0);
    }

    #[test]
    fn negative_only_input_puts_zero_at_the_top() {
        assert_eq!(affine_u8(-3.0, -1.0, false), (3.0 / 255.0, 255));
        assert_eq!(affine_u8(-3.0, -1.0, true), (3.0 / 127.0, 127));
    }

    #[test]
    fn tiny_range_is_clamped_to_eps_and_keeps_zero_point_in_range() {
        let (scale, zero_point) = affine_u8(-1e-9, 1e-9, false);
        assert_eq!(scale, f32::EPSILON);
        assert_eq!(zero_point, 0);
    }

    #[test]
    fn reduce_range_halves_the_range() {
        assert_eq!(QDType::QUInt8.quant_range(true), (0, 127));
        assert_eq!(QDType::QInt8.quant_range(true), (-64, 63));
        let (full, _) = affine_u8(-1.0, 1.0, false);
        let (reduced, zero_point) = affine_u8(-1.0, 1.0, true);
        assert_eq!(full, 2.0 / 255.0);
        assert_eq!(reduced, 2.0 / 127.0);
        assert_eq!(zero_point, 64); // 0 - round(-1 / (2/127)) = round_half_even(63.5) = 64
    }

    #[test]
    fn symmetric_uses_the_larger_side() {
        let (scale, zero_point) = calculate_qparams(-2.0, 1.0, -128, 127, true, QDType::QInt8);
        assert_eq!(scale, 2.0 / 127.5);
        assert_eq!(zero_point, 0);
    }

    #[test]
    fn nothing_observed_gives_the_default() {
        assert_eq!(affine_u8(f32::INFINITY, f32::NEG_INFINITY, false), (1.0, 0));
        let config = ObserverConfig::min_max(false);
        let params = QParams::from_ranges(&config, &[(f32::INFINITY, f32::NEG_INFINITY)]).unwrap();
        assert_eq!((params.scale, params.zero_point), (vec![1.0], vec![0]));
    }

    #[test]
    fn min_above_max_is_an_error() {
        let config = ObserverConfig {
            kind: ObserverKind::PerChannelMinMax,
            dtype: QDType::QInt8,
            scheme: QScheme::PerChannelAffine { axis: 0 },
            reduce_range: false,
        };
        assert!(QParams::from_ranges(&config, &[(0.0, 1.0), (2.0, 1.0)]).is_err());
        assert!(QParams::from_ranges(&ObserverConfig::min_max(false), &[(2.0, 1.0)]).is_err());
    }
}

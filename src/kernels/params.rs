//! Quantization parameters, the requantization definition and the helpers that turn PyTorch's
//! float parameters into the integer ones the kernels take.

use serde::{Deserialize, Serialize};

use super::simd::{Tier, multiversion};
use super::table::Table;
use crate::{Error, Result};

/// Affine `u8` quantization parameters: `x = scale · (q − zero_point)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct QParams {
    /// The step between two quantized values; finite and positive.
    pub scale: f32,
    /// The `u8` value that represents 0.0.
    pub zero_point: u8,
}

impl QParams {
    /// Parameters with the given scale and zero point.
    pub fn new(scale: f32, zero_point: u8) -> Self {
        QParams { scale, zero_point }
    }

    /// `Err(InvalidArgument)` unless the scale is finite and positive.
    pub(crate) fn check(&self, what: &str) -> Result<()> {
        if self.scale.is_finite() && self.scale > 0.0 {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "{what}: scale must be finite and positive, got {}",
                self.scale
            )))
        }
    }
}

/// How an `i32` accumulator becomes the `u8` output of a conv or linear layer:
/// `q = requantize(acc, multiplier(c), zero_point, qmin, qmax)`, then `table[q]` if a lookup
/// table is fused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Requant {
    /// `s_x·s_w[c] / s_y` per output channel (length `out_channels`), or one value for all.
    pub multipliers: Vec<f32>,
    /// The output zero point `z_y`.
    pub zero_point: u8,
    /// The lowest output value: `0`, or `z_y` for a fused ReLU.
    pub qmin: u8,
    /// The highest output value: `255`, or the quantized 6.0 for a fused ReLU6.
    pub qmax: u8,
    /// A lookup table applied to the requantized value (a fused elementwise function whose
    /// output quantization the table's entries encode); `None` for none.
    #[serde(default)]
    pub table: Option<Table>,
}

impl Requant {
    /// No fused activation: the output spans `0..=255`.
    pub fn new(multipliers: Vec<f32>, zero_point: u8) -> Self {
        Requant {
            multipliers,
            zero_point,
            qmin: 0,
            qmax: 255,
            table: None,
        }
    }

    /// Fuses a lookup table: the output becomes `table[requantize(acc, m, z_y, qmin, qmax)]`.
    pub fn with_table(mut self, table: Table) -> Self {
        self.table = Some(table);
        self
    }

    /// Fuses a ReLU: `qmin = z_y`.
    pub fn with_relu(mut self) -> Self {
        self.qmin = self.zero_point;
        self
    }

    /// Fuses a ReLU6 for an output of scale `y_scale`: `qmin = z_y` and `qmax` = 6.0 quantized
    /// exactly as [`crate::kernels::quantize`] would (PyTorch's `quantize_val(s_y, z_y, 6.0)`).
    pub fn with_relu6(mut self, y_scale: f32) -> Self {
        self.qmin = self.zero_point;
        self.qmax = quantize_one(6.0, 1.0 / y_scale, f32::from(self.zero_point));
        self
    }

    /// The multiplier of output channel `c` (call [`Requant::check`] first).
    pub(crate) fn multiplier(&self, c: usize) -> f32 {
        if self.multipliers.len() == 1 {
            self.multipliers[0]
        } else {
            self.multipliers[c]
        }
    }

    /// `Err` unless there are 1 or `channels` finite multipliers and `qmin <= qmax`.
    pub(crate) fn check(&self, channels: usize) -> Result<()> {
        let n = self.multipliers.len();
        if n != 1 && n != channels {
            return Err(Error::Shape {
                context: "requant multipliers".into(),
                expected: format!("1 or {channels} values"),
                got: format!("{n} values"),
            });
        }
        if let Some(bad) = self.multipliers.iter().find(|m| !m.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "requant multiplier {bad} is not finite"
            )));
        }
        if self.qmin > self.qmax {
            return Err(Error::InvalidArgument(format!(
                "requant qmin {} is above qmax {}",
                self.qmin, self.qmax
            )));
        }
        Ok(())
    }
}

/// THE requantization: `i32` accumulator → `u8`, as fbgemm's `ReQuantizeOutput`.
///
/// Exactly, in `f32` with round-to-nearest-even at every step and no fused multiply-add:
/// `v = (acc as f32) * multiplier` (the `i32 → f32` conversion rounds to nearest even), then
/// `v` is clamped to `[qmin − z, qmax − z]`, rounded half to even, and `z` is added. Because
/// rounding is monotone and the bounds are integers this equals
/// `clamp(round_half_even(acc·m) + z, qmin, qmax)`, and it never overflows. Every SIMD path
/// (`cvtdq2ps`, `mulps`, `maxps`, `minps`, `cvtps2dq`) computes these same operations.
pub fn requantize(acc: i32, multiplier: f32, zero_point: u8, qmin: u8, qmax: u8) -> u8 {
    let z = f32::from(zero_point);
    requantize_parts(
        acc,
        multiplier,
        i32::from(zero_point),
        f32::from(qmin) - z,
        f32::from(qmax) - z,
    )
}

/// [`requantize`] with its constants precomputed: `lo = qmin − z`, `hi = qmax − z`.
#[inline(always)]
pub(crate) fn requantize_parts(acc: i32, multiplier: f32, zero_point: i32, lo: f32, hi: f32) -> u8 {
    round_to_u8(acc as f32 * multiplier, zero_point, lo, hi)
}

/// The end of [`requantize`]: clamp `v` to `[lo, hi]`, round half to even, add `zero_point`.
///
/// The clamps are written as comparisons (`maxps`/`minps` semantics, identical to
/// `f32::max`/`f32::min` for these operands: a NaN `v` becomes `lo`) and the rounding as
/// [`round_half_even`], so that loops over it vectorize.
#[inline(always)]
pub(crate) fn round_to_u8(v: f32, zero_point: i32, lo: f32, hi: f32) -> u8 {
    round_clamped(v, zero_point, lo, hi) as u8
}

/// [`round_to_u8`] as an `i32`, for outputs of other widths: `lo`/`hi` bound the result to
/// `zero_point + [lo, hi]` (within ±2^22, where the rounding is exact).
#[inline(always)]
pub(crate) fn round_clamped(v: f32, zero_point: i32, lo: f32, hi: f32) -> i32 {
    let v = if v > lo { v } else { lo };
    let v = if v < hi { v } else { hi };
    round_half_even(v) + zero_point
}

/// Quantizes one value with a precomputed `inv_scale = 1/scale` and `zero = z as f32`:
/// `clamp(round_half_even(fma(x, inv_scale, zero)), 0, 255)`, NaN → 255 (see
/// [`crate::kernels::quantize`]).
#[inline(always)]
pub(crate) fn quantize_one(x: f32, inv_scale: f32, zero: f32) -> u8 {
    let v = x.mul_add(inv_scale, zero);
    let v = if v < 255.0 { v } else { 255.0 };
    let v = if v > 0.0 { v } else { 0.0 };
    round_half_even(v) as u8
}

/// `v.round_ties_even() as i32` for `|v| <= 2^22`: adding `1.5·2^23` rounds to an integer
/// (ties to even, the default rounding) and leaves it in the low mantissa bits. Written with a
/// bit cast because float-to-int casts do not vectorize.
#[inline(always)]
fn round_half_even(v: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32
}

/// The largest integer bias magnitude [`bias_safe_weight_scales`] allows: `2^30`, which leaves
/// the other half of the `i32` range to `Σ x·w` (at most `255·128` per term, so up to about
/// 32,000 terms per output) and keeps the accumulator from wrapping.
pub const MAX_BIAS_I32: f32 = 1_073_741_824.0;

/// Weight scales, per channel, raised where needed so that `bias[c] / (x_scale · w_scale[c])`
/// stays within [`MAX_BIAS_I32`].
///
/// A channel whose weights are all (or almost) zero gets a tiny scale from its observer; its
/// bias divided by that scale would not fit an `i32` and, saturated, would wrap the accumulator.
/// Such a channel's output is its bias alone, so a larger scale loses nothing: its weights
/// round to the same few steps (or zero) and the bias is represented as closely as any other.
/// Channels whose bias fits keep their observer's scale.
pub fn bias_safe_weight_scales(bias: &[f32], x_scale: f32, w_scales: &[f32]) -> Vec<f32> {
    w_scales
        .iter()
        .zip(bias)
        .map(|(&w, &b)| {
            if (b / (x_scale * w)).abs() <= MAX_BIAS_I32 {
                w
            } else {
                // A few ulps above the exact bound, for the roundings in `quantize_bias`.
                b.abs() / x_scale / MAX_BIAS_I32 * (1.0 + 4.0 * f32::EPSILON)
            }
        })
        .collect()
}

/// Integer biases for a conv or linear layer with a float bias, as close as an integer can get
/// to fbgemm's.
///
/// `bias_i32[c] = round_half_even(bias[c] / (x_scale · w_scale[c]))` in `f32` (the product
/// rounded first, then the quotient; saturating at the `i32` range). fbgemm keeps the quotient
/// as a float and adds it to the converted accumulator, so outputs can differ from PyTorch's by
/// one step in the rare cases where the dropped fraction moves `acc·m` across a rounding
/// boundary. `w_scales` has one value per channel or one for all.
pub fn quantize_bias(bias: &[f32], x_scale: f32, w_scales: &[f32]) -> Vec<i32> {
    bias.iter()
        .enumerate()
        .map(|(c, &b)| {
            let w_scale = if w_scales.len() == 1 {
                w_scales[0]
            } else {
                w_scales[c]
            };
            (b / (x_scale * w_scale)).round_ties_even() as i32
        })
        .collect()
}

/// Per-channel requantization multipliers as fbgemm computes them:
/// `(x_scale · w_scale[c]) / y_scale` in `f32`, the product rounded first.
pub fn conv_multipliers(x_scale: f32, w_scales: &[f32], y_scale: f32) -> Vec<f32> {
    w_scales.iter().map(|&w| (x_scale * w) / y_scale).collect()
}

/// The requantization constants as the kernels read them, per packed output column.
#[derive(Clone, Debug)]
pub(crate) struct Epilogue {
    /// One multiplier per packed column (padding columns hold 0).
    pub(crate) multipliers: Vec<f32>,
    /// `z_y` as `i32`.
    pub(crate) zero_point: i32,
    /// `qmin − z_y`, the lower clamp applied before rounding.
    pub(crate) lo: f32,
    /// `qmax − z_y`, the upper clamp applied before rounding.
    pub(crate) hi: f32,
    /// The fused lookup table, applied to the requantized bytes.
    pub(crate) table: Option<Table>,
}

impl Epilogue {
    /// Builds the constants of `requant` for packed columns whose channels `column_channel`
    /// gives (`None` for padding columns). `requant` must have passed [`Requant::check`].
    pub(crate) fn new(requant: &Requant, columns: impl Iterator<Item = Option<usize>>) -> Self {
        let z = f32::from(requant.zero_point);
        Epilogue {
            multipliers: columns
                .map(|c| c.map_or(0.0, |c| requant.multiplier(c)))
                .collect(),
            zero_point: i32::from(requant.zero_point),
            lo: f32::from(requant.qmin) - z,
            hi: f32::from(requant.qmax) - z,
            table: requant.table.clone(),
        }
    }

    /// The epilogue of a GEMM with float outputs, which reads no requantization constant:
    /// zero multipliers for `columns` packed columns.
    pub(crate) fn unused(columns: usize) -> Self {
        Epilogue {
            multipliers: vec![0.0; columns],
            zero_point: 0,
            lo: 0.0,
            hi: 0.0,
            table: None,
        }
    }

    /// Maps requantized output bytes through the fused table, if any: `q → table[q]` (on
    /// `tier`; every tier gives the same bytes).
    #[inline(always)]
    pub(crate) fn map_table(&self, tier: Tier, out: &mut [u8]) {
        if let Some(table) = &self.table {
            table.map_in_place(tier, out);
        }
    }
}

/// How the `i32` accumulators of a GEMM with float outputs become floats (dynamic
/// quantization): output row `r`, column `c` is `((acc − z_r·Σw_c) as f32)·(s_r·s_c) + b_c`,
/// with `z_r`, `s_r` the zero point and scale row `r` of A was quantized with, `s_c` the
/// weight scale of column `c`, `Σw_c` its weight sum and `b_c` its float bias. The correction
/// is exact `i32` arithmetic while `|z_r·Σw_c|` and the accumulator fit (the caller bounds
/// `K`); each float operation rounds on its own (no fused multiply-add), so every path, and
/// a reference that computes the same expression, agree bit for bit.
pub(crate) struct Dequant<'a> {
    /// `s_r` per row.
    pub(crate) row_scales: &'a [f32],
    /// `z_r` per row.
    pub(crate) row_zero_points: &'a [i32],
    /// `s_c` per column.
    pub(crate) col_scales: &'a [f32],
    /// `Σ_k w[k][c]` per column.
    pub(crate) col_sums: &'a [i32],
    /// `b_c` per column.
    pub(crate) bias: &'a [f32],
}

impl Dequant<'_> {
    /// Rows described.
    pub(crate) fn rows(&self) -> usize {
        self.row_scales.len().min(self.row_zero_points.len())
    }

    /// Columns described.
    pub(crate) fn columns(&self) -> usize {
        (self.col_scales.len())
            .min(self.col_sums.len())
            .min(self.bias.len())
    }

    /// Replaces the accumulators of row `row`, columns `first..first + values.len()` by the
    /// bits of their floats, at `tier` (the same bits on every tier).
    #[inline]
    pub(crate) fn to_float_bits(&self, tier: Tier, values: &mut [i32], row: usize, first: usize) {
        let row = (self.row_scales[row], self.row_zero_points[row]);
        let columns = first..first + values.len();
        let columns = (
            &self.col_scales[columns.clone()],
            &self.col_sums[columns.clone()],
            &self.bias[columns],
        );
        float_bits(tier, values, row, columns);
    }
}

multiversion! {
    /// [`Dequant::to_float_bits`] of one row `(s, z)`, its columns' `(scales, sums, biases)`.
    fn float_bits(values: &mut [i32], row: (f32, i32), columns: (&[f32], &[i32], &[f32])) {
        let ((s, z), (scales, sums, bias)) = (row, columns);
        for (((v, &sc), &sum), &b) in values.iter_mut().zip(scales).zip(sums).zip(bias) {
            let exact = v.wrapping_sub(z.wrapping_mul(sum));
            *v = (exact as f32 * (s * sc) + b).to_bits() as i32;
        }
    }
}

/// A layer's [`Requant`], checked and laid out once for its packed weights (by
/// [`PackedConv2d::prepare`](crate::kernels::PackedConv2d::prepare) or
/// [`PackedLinear::prepare`](crate::kernels::PackedLinear::prepare)), so that a run neither
/// validates nor allocates it again.
#[derive(Clone, Debug)]
pub struct PreparedRequant {
    epilogue: Epilogue,
    channels: usize,
}

impl PreparedRequant {
    /// `requant` checked for `channels` outputs and laid out for the packed columns that
    /// `columns` lists (see [`Epilogue::new`]).
    pub(crate) fn new(
        requant: &Requant,
        channels: usize,
        columns: impl Iterator<Item = Option<usize>>,
    ) -> Result<Self> {
        requant.check(channels)?;
        Ok(PreparedRequant {
            epilogue: Epilogue::new(requant, columns),
            channels,
        })
    }

    /// The epilogue, or `Err(Shape)` unless it was prepared for `channels` outputs laid out
    /// as `columns` packed columns (else it was prepared for another layer).
    pub(crate) fn epilogue(
        &self,
        context: &str,
        channels: usize,
        columns: usize,
    ) -> Result<&Epilogue> {
        expect_len(context, self.channels, channels)?;
        expect_len(context, self.epilogue.multipliers.len(), columns)?;
        Ok(&self.epilogue)
    }
}

/// `Err(Shape)` unless a buffer has the expected length.
pub(crate) fn expect_len(context: &str, got: usize, expected: usize) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(Error::Shape {
            context: context.into(),
            expected: format!("{expected} elements"),
            got: format!("{got} elements"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requantize_rounds_half_to_even_and_clamps() {
        assert_eq!(requantize(5, 0.5, 10, 0, 255), 12); // 2.5 -> 2
        assert_eq!(requantize(7, 0.5, 10, 0, 255), 14); // 3.5 -> 4
        assert_eq!(requantize(-5, 0.5, 10, 0, 255), 8); // -2.5 -> -2
        assert_eq!(requantize(i32::MAX, 1.0, 0, 0, 255), 255);
        assert_eq!(requantize(i32::MIN, 1.0, 200, 0, 255), 0);
        assert_eq!(requantize(-100, 0.1, 50, 50, 255), 50); // fused ReLU
        assert_eq!(requantize(1_000, 0.1, 50, 0, 120), 120); // fused ReLU6
    }

    #[test]
    fn magic_rounding_is_round_half_to_even() {
        let limit = (1 << 22) as f32;
        let mut values = vec![
            -limit, limit, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, -0.0, 0.49999997,
        ];
        values.extend((-2000..2000).map(|i| i as f32 * 0.25));
        values.extend((0..2000).map(|i| (i as f32 * 1234.567).sin() * limit));
        for v in values {
            assert_eq!(round_half_even(v), v.round_ties_even() as i32, "{v}");
        }
    }

    #[test]
    fn quantize_one_matches_fbgemm_examples() {
        // fbgemm's QuantUtils example: x * (1/s) = 127.5 rounds to 128 (ties to even).
        let s = 0.002_148_548_6_f32;
        assert_eq!(quantize_one(0.273_939_94, 1.0 / s, 0.0), 128);
        assert_eq!(quantize_one(f32::NAN, 10.0, 3.0), 255);
        assert_eq!(quantize_one(f32::INFINITY, 10.0, 3.0), 255);
        assert_eq!(quantize_one(-1e30, 10.0, 3.0), 0);
    }

    #[test]
    fn relu6_bound_is_quantized_six() {
        let r = Requant::new(vec![1.0], 10).with_relu6(0.05);
        assert_eq!((r.qmin, r.qmax), (10, 130));
        let r = Requant::new(vec![1.0], 200).with_relu6(0.01);
        assert_eq!(r.qmax, 255);
    }

    #[test]
    fn bias_and_multipliers_follow_fbgemm_rounding() {
        assert_eq!(
            quantize_bias(&[1.0, -0.25, 0.0], 0.5, &[0.1, 0.2, 0.3]),
            vec![20, -2, 0]
        );
        assert_eq!(quantize_bias(&[f32::MAX], 1e-30, &[1e-10]), vec![i32::MAX]);
        let m = conv_multipliers(0.05, &[0.01], 0.06);
        assert_eq!(m, vec![(0.05f32 * 0.01) / 0.06]);
    }

    #[test]
    fn bad_requant_is_an_error() {
        assert!(Requant::new(vec![1.0; 3], 0).check(4).is_err());
        assert!(Requant::new(vec![f32::NAN], 0).check(4).is_err());
        let mut r = Requant::new(vec![1.0], 0);
        r.qmin = 9;
        r.qmax = 8;
        assert!(r.check(4).is_err());
        assert!(Requant::new(vec![1.0; 4], 0).check(4).is_ok());
    }
}

//! Float activations the quantized interpreter runs itself, vectorised, where Burn's CPU
//! backend computes one value at a time (its `erf` and `exp` are scalar library calls): GELU
//! and softmax along the last axis, the float ops between the int8 layers of a dynamically
//! quantized transformer.
//!
//! Both are written once as portable loops ([`multiversion`]) without fused multiply-adds, so
//! every tier gives the same bits; they agree with the exact functions to a few units in the
//! last place (see [`gelu`] and [`softmax_last_axis`]).

use rayon::prelude::*;

use super::elementwise::{CHUNK, tier};
use super::simd::multiversion;
use crate::{Error, Result};

/// GELU in place: `0.5·x·(1 + erf(x/√2))`, with `erf` a rational approximation (the one of
/// Eigen and XNNPACK: odd degree-13 over even degree-8 polynomials, ±1 beyond ±3.92, where
/// `erf` rounds to ±1; absolute error below `5e-7` in `f32`, largest where `erf` nears −1). NaN stays NaN; GELU of `−∞`
/// is NaN, as the formula (and Burn) give.
pub fn gelu(values: &mut [f32]) {
    let tier = tier();
    values
        .par_chunks_mut(CHUNK)
        .for_each(|chunk| gelu_slice(tier, chunk));
}

multiversion! {
    fn gelu_slice(values: &mut [f32]) {
        for v in values.iter_mut() {
            let x = *v;
            *v = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

/// `erf(x)`: Eigen's `generic_fast_erf_float` without fused multiply-adds.
#[inline(always)]
fn erf(x: f32) -> f32 {
    const ALPHA: [f32; 7] = [
        -1.609_603_3e-2,
        -2.954_6e-3,
        -7.349_906_3e-4,
        -5.692_506_4e-5,
        -2.101_024e-6,
        2.770_681_4e-8,
        -2.726_142_3e-10,
    ];
    const BETA: [f32; 5] = [
        -1.426_473_9e-2,
        -7.373_329e-3,
        -1.682_827e-3,
        -2.133_740_6e-4,
        -1.456_607_2e-5,
    ];
    // Comparisons, not `clamp`, so that a NaN passes through.
    let t = if x > 4.0 { 4.0 } else { x };
    let t = if t < -4.0 { -4.0 } else { t };
    let t2 = t * t;
    let p = ALPHA.iter().rev().fold(0.0, |p, &a| p * t2 + a) * t;
    let q = BETA.iter().rev().fold(0.0, |q, &b| q * t2 + b);
    // Beyond ±3.92, erf rounds to ±1 in f32: exactly, so that 1 + erf(−∞) is 0.
    match x {
        x if x > 3.92 => 1.0,
        x if x < -3.92 => -1.0,
        _ => p / q,
    }
}

/// Softmax along the last axis, in place, of rows of `row_len` values: `e_i = exp(x_i − max)`
/// (a Cephes-style `exp`, relative error below `2e-7`; 0 below `−87`, where `exp` leaves the
/// normal floats), then `e_i · (1/Σe)`, the sum taken in 8 fixed lanes. A row holding a NaN
/// becomes NaN, as a row of only `−∞` does. Errors when `values` is not whole rows.
pub fn softmax_last_axis(values: &mut [f32], row_len: usize) -> Result<()> {
    if row_len == 0 || !values.len().is_multiple_of(row_len) {
        return Err(Error::Shape {
            context: "softmax input".into(),
            expected: format!("rows of {row_len} values"),
            got: format!("{} values", values.len()),
        });
    }
    let tier = tier();
    let rows_per_task = (CHUNK / row_len).max(1);
    values
        .par_chunks_mut(rows_per_task * row_len)
        .for_each(|rows| softmax_rows(tier, rows, row_len));
    Ok(())
}

/// Lanes of the reductions: enough for the widest tier's vectors, fixed so every tier sums in
/// the same order.
const LANES: usize = 16;

multiversion! {
    fn softmax_rows(rows: &mut [f32], row_len: usize) {
        for row in rows.chunks_exact_mut(row_len) {
            let max = row_max(row);
            let mut sums = [0.0f32; LANES];
            let mut chunks = row.chunks_exact_mut(LANES);
            for chunk in &mut chunks {
                for (v, sum) in chunk.iter_mut().zip(&mut sums) {
                    *v = exp_nonpositive(*v - max);
                    *sum += *v;
                }
            }
            let mut total = chunks.into_remainder().iter_mut().fold(0.0, |total, v| {
                *v = exp_nonpositive(*v - max);
                total + *v
            });
            total += sums.iter().sum::<f32>();
            let inv = 1.0 / total;
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
    }
}

/// The largest value of a row (NaNs passed over; `−∞` for a row of NaNs).
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = if v > *m { v } else { *m };
        }
    }
    (lanes.iter().chain(tail)).fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// `exp(x)` for `x ≤ 0` (Cephes' `expf`: `x = n·ln2 + r`, a degree-7 polynomial in `r`,
/// times `2^n`); 0 below `−87`; NaN stays NaN.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 355.0 / 512.0;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ];
    let small = x < -87.0;
    let xc = if small { -87.0 } else { x };
    let n = (xc * std::f32::consts::LOG2_E).round_ties_even();
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = P.iter().fold(0.0, |p, &c| p * r + c);
    let e = p * (r * r) + r + 1.0;
    // `n` lies in −126..=0 here (NaN converts to 0): `2^n` is a normal float.
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if small { 0.0 } else { e * scale }
}

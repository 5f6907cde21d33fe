//! Kernels for 16-bit activations and wider weights (W8A16, W12, W16): `u8` or `u16`
//! activations times `i8` or `i16` weights, written as `u8` or `u16`.
//!
//! A 16-bit activation is affine `u16`: `x = s·(q − z)`, `q` and `z` in `0..=65535`, the same
//! convention as the `u8` activations with twice the bits (chosen over symmetric `i16` so that
//! a ReLU output uses all 16 bits). A layer may read 8-bit and write 16-bit values and back, so
//! one sensitive edge costs one wider layer, not a float island.
//!
//! # Arithmetic
//!
//! * Conv / linear: `acc = Σ (q_x − z_x)·q_w + bias_i32`, exact in `i64`. The kernels read each
//!   activation as `a = q_x − OFFSET` in `i16` (`OFFSET` is 32768 for `u16`, 0 for `u8`), sum
//!   `a·q_w` pair by pair with `vpmaddwd` (AVX-512 BW, AVX2) or plain multiplies (scalar) in
//!   `i32` over blocks of pairs sized from the largest `|a|` and `|w|` so that a block never
//!   overflows ([`gemm::BLOCK_PAIRS`] = 255 for `i8` weights, whose `|a·w| ≤ 2^22`; 1 for
//!   16-bit weights and activations) — and widen each block's sums to `i64`; the constant
//!   `(OFFSET − z_x)·Σ q_w + bias_i32` is added per column.
//! * The accumulator becomes the output through [`requantize_wide`], one scalar definition in
//!   `f64` that all paths share.
//! * Add and sub ([`qbinary_wide`]): the `u8` add's `f32` arithmetic with each value read at
//!   its width and the result clamped to the output's.
//! * Depthwise convolutions sum `(q_x − z_x)·q_w` directly in `i32` while
//!   `taps·65535·max|q_w| < 2^31` (up to 255 taps of `i8` weights), else as a grouped GEMM.

mod avx2;
mod avx512;
mod binary;
mod conv;
mod elementwise;
mod gemm;
mod pack;
#[cfg(test)]
mod tests;

pub use binary::{WideTensorRef, qbinary_wide};
pub use conv::{PackedWideConv2d, qconv2d_wide};
pub use elementwise::{as_u16, as_u16_mut, dequantize_wide, quantize_wide};
pub use gemm::qlinear_wide;
pub use pack::PackedWide;

pub(crate) use gemm::self_check;

use serde::{Deserialize, Serialize};

use crate::kernels::simd::{Tier, multiversion};

use crate::{Error, Result};

/// An activation element the wide kernels read: `u8` or `u16`.
pub trait WideInput: Copy + Send + Sync + sealed::Sealed {
    /// Subtracted from every value so that it fits an `i16` (see the module docs).
    const OFFSET: i32;
    /// The largest `|q − OFFSET|`.
    const MAX_ABS: i32;
    /// The largest value.
    const MAX: u16;
    /// `self − OFFSET`.
    fn to_i16(self) -> i16;
    /// The value.
    fn get(self) -> i32;
    /// `values` with their concrete type.
    fn typed(values: &[Self]) -> Typed<'_>;
}

/// A slice of [`WideInput`] values with its concrete type.
#[derive(Clone, Copy, Debug)]
pub enum Typed<'a> {
    /// `u8` values.
    U8(&'a [u8]),
    /// `u16` values.
    U16(&'a [u16]),
}

/// One depthwise tap over a run of output pixels, compiled for `tier`: for every pixel `i` of
/// `acc` (`c` channels each), `acc[i][ch] += (line[i·step][ch] − zero_point)·w[ch]`, `line`
/// holding pixels of `c` values and `w` the tap's `c` weights repeated for whole pixels (at
/// least once): with `step = 1` the run is summed `w.len()` values at a time.
pub(crate) fn accumulate(
    tier: Tier,
    acc: &mut [i32],
    line: Typed<'_>,
    [c, step]: [usize; 2],
    zero_point: i32,
    w: &[i32],
) {
    match line {
        Typed::U8(line) => accumulate_u8(tier, acc, line, c, step, zero_point, w),
        Typed::U16(line) => accumulate_u16(tier, acc, line, c, step, zero_point, w),
    }
}

/// The body of [`accumulate`] for pixels of type `T`, inlined into each compiled version.
#[inline(always)]
fn accumulate_pixels<T: Copy + Into<i32>>(
    acc: &mut [i32],
    line: &[T],
    [c, step]: [usize; 2],
    zero_point: i32,
    w: &[i32],
) {
    if step == 1 {
        for (acc, pixels) in acc.chunks_mut(w.len()).zip(line.chunks(w.len())) {
            tap(acc, pixels, zero_point, w);
        }
    } else {
        for (i, acc) in acc.chunks_exact_mut(c).enumerate() {
            tap(acc, &line[i * step * c..][..c], zero_point, w);
        }
    }
}

/// `acc[j] += (pixels[j] − zero_point)·w[j]` over the shortest of the three.
#[inline(always)]
fn tap<T: Copy + Into<i32>>(acc: &mut [i32], pixels: &[T], zero_point: i32, w: &[i32]) {
    for ((acc, &x), &w) in acc.iter_mut().zip(pixels).zip(w) {
        *acc += (x.into() - zero_point) * w;
    }
}

multiversion! {
    /// [`accumulate`] over `u8` pixels.
    fn accumulate_u8(acc: &mut [i32], line: &[u8], c: usize, step: usize, zero_point: i32, w: &[i32]) {
        accumulate_pixels(acc, line, [c, step], zero_point, w)
    }
}

multiversion! {
    /// [`accumulate`] over `u16` pixels.
    fn accumulate_u16(acc: &mut [i32], line: &[u16], c: usize, step: usize, zero_point: i32, w: &[i32]) {
        accumulate_pixels(acc, line, [c, step], zero_point, w)
    }
}

/// An output element the wide kernels write: `u8` or `u16`.
pub trait WideOutput: Copy + Default + Send + Sync + sealed::Sealed {
    /// The largest value.
    const MAX: u16;
    /// `v`, which the caller has clamped to `0..=MAX`.
    fn from_clamped(v: i64) -> Self;
}

impl WideInput for u8 {
    const OFFSET: i32 = 0;
    const MAX_ABS: i32 = 255;
    const MAX: u16 = 255;
    fn to_i16(self) -> i16 {
        i16::from(self)
    }
    fn get(self) -> i32 {
        i32::from(self)
    }
    fn typed(values: &[u8]) -> Typed<'_> {
        Typed::U8(values)
    }
}

impl WideInput for u16 {
    const OFFSET: i32 = 32768;
    const MAX_ABS: i32 = 32768;
    const MAX: u16 = u16::MAX;
    fn to_i16(self) -> i16 {
        (self ^ 0x8000) as i16
    }
    fn get(self) -> i32 {
        i32::from(self)
    }
    fn typed(values: &[u16]) -> Typed<'_> {
        Typed::U16(values)
    }
}

impl WideOutput for u8 {
    const MAX: u16 = 255;
    fn from_clamped(v: i64) -> Self {
        v as u8
    }
}

impl WideOutput for u16 {
    const MAX: u16 = u16::MAX;
    fn from_clamped(v: i64) -> Self {
        v as u16
    }
}

mod sealed {
    /// Only `u8` and `u16`.
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for u16 {}
}

/// Affine `u16` quantization parameters: `x = scale · (q − zero_point)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct WideQParams {
    /// The step between two quantized values; finite and positive.
    pub scale: f32,
    /// The value that represents 0.0.
    pub zero_point: u16,
}

impl WideQParams {
    /// Parameters with the given scale and zero point.
    pub fn new(scale: f32, zero_point: u16) -> Self {
        WideQParams { scale, zero_point }
    }

    /// `Err(InvalidArgument)` unless the scale is finite and positive.
    pub(crate) fn check(&self, what: &str) -> Result<()> {
        crate::kernels::QParams::new(self.scale, 0).check(what)
    }
}

/// The quantization of an activation: 8 or 16 bits.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum ActQParams {
    /// `u8` values.
    U8(crate::kernels::QParams),
    /// `u16` values (W8A16).
    U16(WideQParams),
}

impl ActQParams {
    /// The scale.
    pub fn scale(&self) -> f32 {
        match self {
            ActQParams::U8(qp) => qp.scale,
            ActQParams::U16(qp) => qp.scale,
        }
    }

    /// The zero point.
    pub fn zero_point(&self) -> u16 {
        match self {
            ActQParams::U8(qp) => u16::from(qp.zero_point),
            ActQParams::U16(qp) => qp.zero_point,
        }
    }

    /// Bits per value: 8 or 16.
    pub fn bits(&self) -> u8 {
        match self {
            ActQParams::U8(_) => 8,
            ActQParams::U16(_) => 16,
        }
    }

    /// The `u8` parameters, or `None` for 16 bits.
    pub fn as_u8(&self) -> Option<crate::kernels::QParams> {
        match self {
            ActQParams::U8(qp) => Some(*qp),
            ActQParams::U16(_) => None,
        }
    }

    /// Both as `u16`-typed parameters (the wide kernels read either width).
    pub fn widened(&self) -> WideQParams {
        WideQParams::new(self.scale(), self.zero_point())
    }
}

/// How the `i64` accumulator of a wide conv or linear layer becomes its output:
/// `clamp(round_half_even(acc·m[c]) + z, qmin, qmax)` ([`requantize_wide`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequantWide {
    /// `s_x·s_w[c] / s_y` per output channel, or one value for all.
    pub multipliers: Vec<f32>,
    /// The output zero point.
    pub zero_point: u16,
    /// The lowest output value (the zero point for a fused ReLU).
    pub qmin: u16,
    /// The highest output value (255 or 65535 without a fused clamp).
    pub qmax: u16,
}

impl RequantWide {
    /// No fused activation, for outputs of up to `qmax`.
    pub fn new(multipliers: Vec<f32>, zero_point: u16, qmax: u16) -> Self {
        RequantWide {
            multipliers,
            zero_point,
            qmin: 0,
            qmax,
        }
    }

    /// The multiplier of channel `c`.
    pub(crate) fn multiplier(&self, c: usize) -> f32 {
        if self.multipliers.len() == 1 {
            self.multipliers[0]
        } else {
            self.multipliers[c]
        }
    }

    /// The requantization of `channels` channels, one multiplier each, for whole rows.
    pub(crate) fn expanded(&self, channels: usize) -> Expanded {
        let z = f64::from(self.zero_point);
        Expanded {
            multipliers: (0..channels).map(|c| self.multiplier(c)).collect(),
            z: i32::from(self.zero_point),
            lo: f64::from(self.qmin) - z,
            hi: f64::from(self.qmax) - z,
        }
    }

    /// `Err(InvalidArgument)` unless it fits `channels` outputs of type `O`.
    fn check<O: WideOutput>(&self, channels: usize) -> Result<()> {
        let count_ok = self.multipliers.len() == 1 || self.multipliers.len() == channels;
        let finite = self.multipliers.iter().all(|m| m.is_finite());
        let bounds_ok = self.qmin <= self.qmax && self.qmax <= O::MAX && self.zero_point <= O::MAX;
        if count_ok && finite && bounds_ok {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "wide requantization for {channels} channels of at most {}: {self:?}",
                O::MAX
            )))
        }
    }
}

/// The requantization of the wide kernels, in `f64` with round-to-nearest-even at every step:
/// `v = (acc as f64)·(multiplier as f64)`, clamped to `[qmin − z, qmax − z]`, rounded half to
/// even, plus `z`. Because rounding is monotone and the bounds are integers this is
/// `clamp(round_half_even(acc·m) + z, qmin, qmax)`. `acc` is exact in `f64` (the kernels'
/// sums stay below 2^51: at most 2^20 terms of 2^30, plus a constant of at most 2^50).
pub fn requantize_wide(acc: i64, multiplier: f32, zero_point: u16, qmin: u16, qmax: u16) -> i64 {
    let z = f64::from(zero_point);
    let (lo, hi) = (f64::from(qmin) - z, f64::from(qmax) - z);
    i64::from(requantize_parts(acc as f64, f64::from(multiplier), lo, hi)) + i64::from(zero_point)
}

/// [`requantize_wide`] before the zero point: `round_half_even(clamp(acc·m, lo, hi))`.
#[inline(always)]
fn requantize_parts(acc: f64, multiplier: f64, lo: f64, hi: f64) -> i32 {
    let v = acc * multiplier;
    let v = if v > lo { v } else { lo };
    let v = if v < hi { v } else { hi };
    round_half_even(v)
}

/// `v.round_ties_even() as i32` for `|v| < 2^31`, written so that loops over it vectorize (the
/// saturating `as i32` does not): adding `1.5·2^52` rounds half to even into the low mantissa
/// bits.
#[inline(always)]
fn round_half_even(v: f64) -> i32 {
    ((v + MAGIC).to_bits() as i64 - MAGIC.to_bits() as i64) as i32
}

/// `1.5·2^52`: an `f64` whose unit in the last place is 1 and whose low mantissa bits hold any
/// integer below `2^51` in magnitude added to it.
const MAGIC: f64 = 6_755_399_441_055_744.0;

/// `v as f64` for `|v| < 2^51`, written so that loops over it vectorize (an `i64` to `f64`
/// conversion does not without AVX-512 DQ): `v` added to [`MAGIC`]'s bits.
#[inline(always)]
fn exact_f64(v: i64) -> f64 {
    f64::from_bits((v + MAGIC.to_bits() as i64) as u64) - MAGIC
}

/// A [`RequantWide`] with one multiplier per channel, applied a row at a time.
#[derive(Clone)]
pub(crate) struct Expanded {
    multipliers: Vec<f32>,
    z: i32,
    lo: f64,
    hi: f64,
}

impl Expanded {
    /// The requantization of the listed channels in order (`None`: an unused position).
    pub(crate) fn gathered(&self, channels: &[Option<usize>]) -> Expanded {
        Expanded {
            multipliers: (channels.iter())
                .map(|c| c.map_or(0.0, |c| self.multipliers[c]))
                .collect(),
            ..*self
        }
    }

    /// The same requantization for `times` consecutive pixels of all channels (one row of a
    /// depthwise convolution's output).
    pub(crate) fn repeated(&self, times: usize) -> Expanded {
        Expanded {
            multipliers: self.multipliers.repeat(times),
            ..*self
        }
    }

    /// `out[j]` = [`requantize_wide`] of `sums[j] + constants[j]` with multiplier `j`.
    pub(crate) fn row<O: WideOutput>(
        &self,
        tier: Tier,
        sums: &[i64],
        constants: &[i64],
        out: &mut [O],
    ) {
        const CHUNK: usize = 256;
        let mut q = [0u16; CHUNK];
        for (start, out) in (0..out.len()).step_by(CHUNK).zip(out.chunks_mut(CHUNK)) {
            let n = out.len();
            let (s, c) = (&sums[start..][..n], &constants[start..][..n]);
            let m = &self.multipliers[start..][..n];
            requantize_row(tier, s, c, m, self.z, self.lo, self.hi, &mut q[..n]);
            for (o, &v) in out.iter_mut().zip(&q) {
                *o = O::from_clamped(i64::from(v));
            }
        }
    }
}

multiversion! {
    /// [`requantize_wide`] over a row: `out[j]` from `sums[j] + constants[j]` with
    /// `multipliers[j]`, bounds `[lo, hi]` (`qmin − z`, `qmax − z`) and zero point `z`.
    fn requantize_row(
        sums: &[i64],
        constants: &[i64],
        multipliers: &[f32],
        z: i32,
        lo: f64,
        hi: f64,
        out: &mut [u16],
    ) {
        let terms = sums.iter().zip(constants).zip(multipliers);
        for (out, ((&s, &c), &m)) in out.iter_mut().zip(terms) {
            *out = (requantize_parts(exact_f64(s + c), f64::from(m), lo, hi) + z) as u16;
        }
    }
}

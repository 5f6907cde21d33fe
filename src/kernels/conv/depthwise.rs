//! Direct depthwise convolution (`groups == C_in`, `C_out = multiplier·C_in`).
//!
//! Per output pixel and channel `c`, taps are taken in pairs in row-major order
//! (`(0,1), (2,3), …`, a last odd tap alone):
//! `acc[c] = bias'[c] + Σ_pairs (x[t0]·w[t0][c] + x[t1]·w[t1][c])` in wrapping `i32`, with
//! `x[t] = x[pixel(t)][c / multiplier]` (`z_x` where the tap is padding), then
//! [`requantize_parts`] per channel, then the fused lookup table if the requantization has one
//! (`out = table[q]`, applied to a task's block of output pixels once it is written, on both the
//! compiled and the AVX-512 path; not pixel by pixel, where loading bytes just written by
//! narrower masked stores would stall on store forwarding). Pairing changes nothing in exact
//! arithmetic.
//!
//! With [`PackedConv2d::emulate_fbgemm_depthwise`](super::PackedConv2d::emulate_fbgemm_depthwise)
//! each pair sum is first saturated to `i16`, as fbgemm's depthwise kernels do with
//! `vpmaddubsw` (PyTorch's x86 depthwise convs overflow this way when activations use the full
//! `u8` range). The channel loops are plain Rust compiled per tier ([`multiversion`]), so every
//! tier computes the same integers.
//!
//! On the AVX-512 tier the exact case without a channel multiplier (every depthwise layer of
//! MobileNet- and EfficientNet-style models) runs written SIMD instead: 16 channels per step
//! through every tap with the accumulator in a register, a masked step for the rest. Wrapping
//! `i32` sums do not depend on their order, so it gives the same bytes (tested against the
//! scalar reference with the other paths); about 25 % faster than the compiled loops on
//! EfficientNet-Lite0's depthwise shapes.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::Conv2dGeometry;
use super::im2col::ConvRows;
use crate::kernels::params::{Epilogue, requantize_parts};
use crate::kernels::simd::{Tier, multiversion};

/// Output pixels per parallel task (any split gives the same bytes).
const PIXELS_PER_TASK: usize = 64;

/// Depthwise weights as `[tap][C_out]` with the zero point folded into the biases.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct PackedDepthwise {
    weights: Vec<i8>,
    bias: Vec<i32>,
    /// Saturate each tap pair's sum to `i16` (fbgemm's arithmetic).
    #[serde(default)]
    saturate_pairs: bool,
}

impl PackedDepthwise {
    /// Packs `[C_out, 1, kh, kw]` weights: `bias'[c] = bias[c] − z_x·Σ_taps w[c]` (wrapping).
    pub(super) fn new(
        g: &Conv2dGeometry,
        weights_oihw: &[i8],
        bias: &[i32],
        zero_point: u8,
    ) -> Self {
        let (channels, taps) = (g.out_channels, g.taps());
        let mut weights = vec![0; taps * channels];
        for (c, w) in weights_oihw.chunks_exact(taps).enumerate() {
            for (t, &w) in w.iter().enumerate() {
                weights[t * channels + c] = w;
            }
        }
        let bias = bias
            .iter()
            .zip(weights_oihw.chunks_exact(taps))
            .map(|(&b, w)| {
                let sum: i64 = w.iter().map(|&w| i64::from(w)).sum();
                (i64::from(b) - i64::from(zero_point) * sum) as i32
            })
            .collect();
        PackedDepthwise {
            weights,
            bias,
            saturate_pairs: false,
        }
    }

    /// Switches fbgemm's `i16` saturation of tap-pair sums on.
    pub(super) fn saturate_pairs(&mut self) {
        self.saturate_pairs = true;
    }

    /// Whether the packed arrays have the sizes of `channels` outputs and `taps` taps.
    pub(super) fn fits(&self, channels: usize, taps: usize) -> bool {
        self.weights.len() == channels * taps && self.bias.len() == channels
    }

    /// Computes every output pixel of `rows` into `out` (`[pixels, C_out]`, length-checked).
    pub(super) fn run(&self, tier: Tier, rows: &ConvRows, epilogue: &Epilogue, out: &mut [u8]) {
        let g = rows.geometry();
        let zero_row = vec![rows.zero_point(); g.in_channels];
        let job = Job {
            packed: self,
            rows,
            epilogue,
            zero_row: &zero_row,
            multiplier: g.out_channels / g.in_channels,
        };
        #[cfg(target_arch = "x86_64")]
        let simd = tier == Tier::Avx512 && job.multiplier == 1 && !self.saturate_pairs;
        out.par_chunks_mut(PIXELS_PER_TASK * g.out_channels)
            .enumerate()
            .for_each(|(task, out)| {
                let first = task * PIXELS_PER_TASK;
                #[cfg(target_arch = "x86_64")]
                if simd {
                    exact_pixels_avx512(&job, first, out);
                    return epilogue.map_table(tier, out);
                }
                pixels(tier, &job, first, out);
                epilogue.map_table(tier, out);
            });
    }
}

/// Everything one task reads.
struct Job<'a> {
    packed: &'a PackedDepthwise,
    rows: &'a ConvRows<'a>,
    epilogue: &'a Epilogue,
    zero_row: &'a [u8],
    multiplier: usize,
}

multiversion! {
    /// Output pixels `first..` (as many as `out` holds).
    fn pixels(job: &Job<'_>, first: usize, out: &mut [u8]) {
        let (packed, ep, m, rows) = (job.packed, job.epilogue, job.multiplier, job.rows);
        let channels = packed.bias.len();
        let g = rows.geometry();
        let offsets = tap_offsets(g, channels, packed);
        let (lo16, hi16) =
            if packed.saturate_pairs { (-32768, 32767) } else { (i32::MIN, i32::MAX) };
        let mut acc = vec![0i32; channels];
        let mut taps: Vec<&[u8]> = Vec::with_capacity(offsets.len());
        for (out, pixel) in out.chunks_exact_mut(channels).zip(rows.pixels_from(first)) {
            gather_taps(job, pixel, &offsets, &mut taps);
            acc.copy_from_slice(&packed.bias);
            for t0 in (0..taps.len()).step_by(2) {
                let t1 = (t0 + 1).min(taps.len() - 1);
                let (x0, x1) = (taps[t0], taps[t1]);
                let w0 = &packed.weights[t0 * channels..][..channels];
                // A last odd tap pairs with nothing (`second` is 0).
                let w1 = &packed.weights[t1 * channels..][..channels];
                let second = i32::from(t1 > t0);
                let pair = |a0: u8, b0: i8, a1: u8, b1: i8| {
                    let sum = i32::from(a0) * i32::from(b0) + second * i32::from(a1) * i32::from(b1);
                    sum.clamp(lo16, hi16)
                };
                if m == 1 {
                    let lanes = x0.iter().zip(x1).zip(w0.iter().zip(w1));
                    for (acc, ((&a0, &a1), (&b0, &b1))) in acc.iter_mut().zip(lanes) {
                        *acc = acc.wrapping_add(pair(a0, b0, a1, b1));
                    }
                } else {
                    for (c, acc) in acc.iter_mut().enumerate() {
                        *acc = acc.wrapping_add(pair(x0[c / m], w0[c], x1[c / m], w1[c]));
                    }
                }
            }
            for ((out, &acc), &m) in out.iter_mut().zip(&acc).zip(&ep.multipliers) {
                *out = requantize_parts(acc, m, ep.zero_point, ep.lo, ep.hi);
            }
        }
    }
}

/// `(dy, dx)` of every tap, in the packed weights' order.
fn tap_offsets(
    g: &Conv2dGeometry,
    channels: usize,
    packed: &PackedDepthwise,
) -> Vec<(usize, usize)> {
    let ([_, kw], [dh, dw]) = (g.kernel, g.dilation);
    (0..packed.weights.len() / channels)
        .map(|t| (t / kw * dh, t % kw * dw))
        .collect()
}

/// The input pixel (all channels) under every tap of output `pixel`: the zero-point row where
/// the tap is padding.
#[inline(always)]
fn gather_taps<'a>(
    job: &Job<'a>,
    pixel: [usize; 3],
    offsets: &[(usize, usize)],
    taps: &mut Vec<&'a [u8]>,
) {
    let (y0, x0) = job.rows.origin(pixel);
    taps.clear();
    taps.extend(offsets.iter().map(|&(dy, dx)| {
        job.rows
            .pixel(pixel[0], y0 + dy as isize, x0 + dx as isize)
            .unwrap_or(job.zero_row)
    }));
}

/// The exact path (no channel multiplier, no pair saturation) with AVX-512: output pixels
/// `first..` (as many as `out` holds). Same integers as [`pixels`] (wrapping `i32` sums do not
/// depend on their order; the requantization is [`requantize_parts`] lane by lane).
#[cfg(target_arch = "x86_64")]
fn exact_pixels_avx512(job: &Job<'_>, first: usize, out: &mut [u8]) {
    let packed = job.packed;
    let channels = packed.bias.len();
    let offsets = tap_offsets(job.rows.geometry(), channels, packed);
    // Every tap is an input pixel (`ConvRows::pixel`: `C_in` bytes) or the zero row.
    assert!(
        job.rows.geometry().in_channels == channels
            && job.zero_row.len() == channels
            && packed.weights.len() == offsets.len() * channels
            && job.epilogue.multipliers.len() >= channels,
        "depthwise operands hold every channel"
    );
    let mut taps: Vec<&[u8]> = Vec::with_capacity(offsets.len());
    for (out, pixel) in out
        .chunks_exact_mut(channels)
        .zip(job.rows.pixels_from(first))
    {
        gather_taps(job, pixel, &offsets, &mut taps);
        // SAFETY: `run` takes this path only for `Tier::Avx512`, which comes from an available
        // ISA implying AVX-512 F/BW/VL; the assertion above gives the lengths `pixel` reads.
        unsafe { avx512::pixel(&taps, &packed.weights, &packed.bias, job.epilogue, out) };
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use crate::kernels::params::Epilogue;

    /// `round_half_even`'s constant, `1.5·2^23`.
    const MAGIC: f32 = 12_582_912.0;

    /// One output pixel, 16 channels per step (a masked step for the rest):
    /// `acc = bias' + Σ_taps x·w` in wrapping `i32`, then `requantize_parts` per lane.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL must be available; every `taps[t]` and `epilogue.multipliers` hold at
    /// least `out.len()` values, `bias` exactly `out.len()`, and `weights` `taps.len()·out.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn pixel(
        taps: &[&[u8]],
        weights: &[i8],
        bias: &[i32],
        epilogue: &Epilogue,
        out: &mut [u8],
    ) {
        let channels = out.len();
        let (lo, hi) = (_mm512_set1_ps(epilogue.lo), _mm512_set1_ps(epilogue.hi));
        let magic = _mm512_set1_ps(MAGIC);
        let magic_bits = _mm512_set1_epi32(MAGIC.to_bits() as i32);
        let zero_point = _mm512_set1_epi32(epilogue.zero_point);
        for c in (0..channels).step_by(16) {
            let n = (channels - c).min(16);
            let mask: __mmask16 = if n == 16 { u16::MAX } else { (1 << n) - 1 };
            // SAFETY (all loads and the store): masked to the `n` lanes from `c`, which the
            // caller's lengths hold; masked-off lanes are not touched.
            unsafe {
                let mut acc = _mm512_maskz_loadu_epi32(mask, bias.as_ptr().add(c));
                for (t, x) in taps.iter().enumerate() {
                    let x = _mm_maskz_loadu_epi8(mask, x.as_ptr().add(c).cast());
                    let w = _mm_maskz_loadu_epi8(mask, weights.as_ptr().add(t * channels + c));
                    let product =
                        _mm512_mullo_epi32(_mm512_cvtepu8_epi32(x), _mm512_cvtepi8_epi32(w));
                    acc = _mm512_add_epi32(acc, product);
                }
                let m = _mm512_maskz_loadu_ps(mask, epilogue.multipliers.as_ptr().add(c));
                let v = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), m);
                // `if v > lo { v } else { lo }`, then `if v < hi { v } else { hi }`.
                let v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, lo), lo, v);
                let v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, hi), hi, v);
                let rounded =
                    _mm512_sub_epi32(_mm512_castps_si512(_mm512_add_ps(v, magic)), magic_bits);
                let q = _mm512_cvtepi32_epi8(_mm512_add_epi32(rounded, zero_point));
                _mm_mask_storeu_epi8(out.as_mut_ptr().add(c).cast(), mask, q);
            }
        }
    }
}

//! Direct depthwise convolution (`groups == C_in`, `C_out = multiplier·C_in`).
//!
//! Per output pixel and channel `c`, taps are taken in pairs in row-major order
//! (`(0,1), (2,3), …`, a last odd tap alone):
//! `acc[c] = bias'[c] + Σ_pairs (x[t0]·w[t0][c] + x[t1]·w[t1][c])` in wrapping `i32`, with
//! `x[t] = x[pixel(t)][c / multiplier]` (`z_x` where the tap is padding), then
//! [`requantize_parts`](crate::kernels::params::requantize_parts) per channel, then the fused
//! lookup table if the requantization has one (`out = table[q]`, applied to a task's output row
//! once it is written, not pixel by pixel, where loading bytes just written by narrower masked
//! stores would stall on store forwarding). Pairing changes nothing in exact arithmetic.
//!
//! With [`PackedConv2d::emulate_fbgemm_depthwise`](super::PackedConv2d::emulate_fbgemm_depthwise)
//! each pair sum is first saturated to `i16`, as fbgemm's depthwise kernels do with
//! `vpmaddubsw` (PyTorch's x86 depthwise convs overflow this way when activations use the full
//! `u8` range).
//!
//! One parallel task is one output row. Its pixels whose taps all lie inside the image
//! horizontally (vertical padding reads a row of `z_x`) run as one *window*: per tap, a slice
//! of the input row at the tap's column, read at `offset + j·step` for the row's `j`-th pixel.
//! Each border pixel runs as a window of its own (padding taps read `z_x`). A window is computed
//! by one of four kernels, all giving the same bytes:
//! * [`scalar`]: the portable loops, compiled per tier ([`multiversion`](crate::kernels::simd));
//!   every tier's only kernel for a channel multiplier, and the oracle the others are tested
//!   against;
//! * [`avx512vnni`] (AVX-512 tier with VNNI, exact layers without a multiplier — every depthwise
//!   layer of MobileNet- and EfficientNet-style models): 64 channels × 4 pixels per step,
//!   `vpdpbusd` straight on the input bytes;
//! * [`avx512`] (AVX-512 tier, fbgemm's mode): 16 channels × 4 pixels per step with the accumulators in
//!   registers through every tap pair: the two taps' bytes widened and interleaved into `i16`
//!   pairs, `vpmaddwd` with weights interleaved the same way at pack time (so each product is
//!   the exact `i32` pair sum, then saturated to `i16` in fbgemm's mode); a masked step for the
//!   last channels;
//! * [`avx2`] (AVX2 tier): the same with 8 channels per step, the last `C % 8` channels by the
//!   scalar kernel.

mod scalar;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512vnni;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::Conv2dGeometry;
use super::im2col::ConvRows;
use crate::kernels::params::Epilogue;
use crate::kernels::simd::Tier;

/// Output pixels per register block of the SIMD kernels (the rest one at a time).
#[cfg(target_arch = "x86_64")]
const PIXELS: usize = 4;

/// `round_half_even`'s constant, `1.5·2^23` (the SIMD kernels' requantization).
#[cfg(target_arch = "x86_64")]
const MAGIC: f32 = 12_582_912.0;

/// Depthwise weights as `[tap][C_out]` with the zero point folded into the biases.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "StoredDepthwise")]
pub(super) struct PackedDepthwise {
    weights: Vec<i8>,
    bias: Vec<i32>,
    /// Saturate each tap pair's sum to `i16` (fbgemm's arithmetic).
    saturate_pairs: bool,
    /// Derived from `weights` (not saved): `[pair][C_out]`, the `i16` weights of the pair's
    /// taps `(w[t0][c], w[t1][c])` in the low and high half (`0` for a lone last tap).
    #[serde(skip)]
    pairs: Vec<i32>,
    /// Derived (not saved), for the VNNI kernel: `[tap][C.div_ceil(64)][4][64]`, vector `j`
    /// of a 64-channel block holding `w[t][64b + 4k + j]` at byte `4k + j`, zeros elsewhere.
    #[serde(skip)]
    quads: Vec<i8>,
    /// Derived (not saved): `bias` in [`quad_order`].
    #[serde(skip)]
    quad_bias: Vec<i32>,
}

/// The saved fields of [`PackedDepthwise`].
#[derive(Deserialize)]
struct StoredDepthwise {
    weights: Vec<i8>,
    bias: Vec<i32>,
    #[serde(default)]
    saturate_pairs: bool,
}

impl From<StoredDepthwise> for PackedDepthwise {
    fn from(s: StoredDepthwise) -> Self {
        let channels = s.bias.len();
        let quads = s
            .weights
            .chunks_exact(channels.max(1))
            .flat_map(|w| {
                quad_order(w, 0).into_iter().enumerate().flat_map(|(i, w)| {
                    // Lane `k` of vector `j` in block `b` (`i = (b·4 + j)·16 + k`).
                    let j = i / 16 % 4;
                    (0..4).map(move |byte| if byte == j { w } else { 0 })
                })
            })
            .collect();
        PackedDepthwise {
            quads,
            quad_bias: quad_order(&s.bias, 0),
            pairs: interleave_pairs(&s.weights, channels),
            weights: s.weights,
            bias: s.bias,
            saturate_pairs: s.saturate_pairs,
        }
    }
}

/// The `[pair][C]` layout of `[tap][C]` weights (see [`PackedDepthwise::pairs`]; empty for
/// no channels, a partial last tap is ignored).
fn interleave_pairs(weights: &[i8], channels: usize) -> Vec<i32> {
    let taps = weights.len().checked_div(channels).unwrap_or(0);
    let half = |t: usize, c: usize| {
        let w = if t < taps {
            weights[t * channels + c]
        } else {
            0
        };
        i32::from(w as i16 as u16)
    };
    (0..taps.div_ceil(2))
        .flat_map(|p| (0..channels).map(move |c| half(2 * p, c) | (half(2 * p + 1, c) << 16)))
        .collect()
}

/// Per-channel values in the VNNI kernel's order, `[C.div_ceil(64)][4][16]`: entry
/// `(b, j, k)` is channel `64b + 4k + j` (`pad` past the last channel).
fn quad_order<T: Copy>(values: &[T], pad: T) -> Vec<T> {
    let blocks = values.len().div_ceil(64);
    (0..blocks * 64)
        .map(|i| {
            let (b, j, k) = (i / 64, i / 16 % 4, i % 16);
            values.get(64 * b + 4 * k + j).copied().unwrap_or(pad)
        })
        .collect()
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
        StoredDepthwise {
            weights,
            bias,
            saturate_pairs: false,
        }
        .into()
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
        let ([_, in_w], [_, ow]) = rows.sizes();
        let zero_row = vec![rows.zero_point(); in_w * g.in_channels];
        // The VNNI kernel takes exact depthwise layers without a multiplier on the AVX-512
        // tier (every ISA of that tier has VNNI on the CPUs that exist; checked anyway).
        #[cfg(target_arch = "x86_64")]
        let vnni = (tier == Tier::Avx512
            && !self.saturate_pairs
            && g.in_channels == g.out_channels
            && std::arch::is_x86_feature_detected!("avx512vnni"))
        .then(|| quad_order(&epilogue.multipliers[..g.out_channels], 0.0));
        let job = Job {
            packed: self,
            rows,
            epilogue,
            zero_row: &zero_row,
            tier,
            #[cfg(target_arch = "x86_64")]
            vnni_multipliers: vnni.as_deref(),
        };
        out.par_chunks_mut(ow * g.out_channels)
            .enumerate()
            .for_each_init(
                || Vec::with_capacity(g.taps()),
                |taps, (row, out)| {
                    job.row(row, taps, out);
                    epilogue.map_table(tier, out);
                },
            );
    }
}

/// `kernel::<SAT>(args)` with the const `SAT` equal to the run-time `sat`.
#[cfg(target_arch = "x86_64")]
macro_rules! by_saturation {
    ($sat:expr, $($kernel:ident)::+($($arg:expr),*)) => {
        if $sat {
            $($kernel)::+::<true>($($arg),*)
        } else {
            $($kernel)::+::<false>($($arg),*)
        }
    };
}

/// Everything one task reads.
struct Job<'a> {
    packed: &'a PackedDepthwise,
    rows: &'a ConvRows<'a>,
    epilogue: &'a Epilogue,
    /// `z_x` for a whole input row.
    zero_row: &'a [u8],
    tier: Tier,
    /// The multipliers in [`quad_order`] if the VNNI kernel runs.
    #[cfg(target_arch = "x86_64")]
    vnni_multipliers: Option<&'a [f32]>,
}

/// A run of output pixels along one output row: the `j`-th reads tap `t` at
/// `taps[t][offset + j·step..]` (`C_in` channels).
struct Window<'a, 'b> {
    taps: &'b [&'a [u8]],
    offset: usize,
    step: usize,
}

impl Window<'_, '_> {
    /// Asserts the kernels' contract for output `out` (`[pixels, C_out]`): every read of the
    /// window (`in_channels` bytes per pixel and tap) is in bounds, and the packed arrays and
    /// multipliers hold every channel.
    fn check(&self, packed: &PackedDepthwise, in_channels: usize, epilogue: &Epilogue, out: &[u8]) {
        let channels = packed.bias.len();
        let taps = self.taps.len();
        let pixels = out.len() / channels;
        let last = self.offset + pixels.saturating_sub(1) * self.step + in_channels;
        assert!(
            self.taps.iter().all(|t| t.len() >= last)
                && packed.fits(channels, taps)
                && packed.pairs.len() == taps.div_ceil(2) * channels
                && packed.quad_bias.len() == channels.div_ceil(64) * 64
                && packed.quads.len() == taps * packed.quad_bias.len() * 4
                && epilogue.multipliers.len() >= channels
                && out.len() == pixels * channels,
            "depthwise operands hold every pixel and channel"
        );
    }
}

impl<'a> Job<'a> {
    /// Output row `row` (`n·oh + oy`) into `out`; `taps` is scratch space.
    fn row(&self, row: usize, taps: &mut Vec<&'a [u8]>, out: &mut [u8]) {
        let g = self.rows.geometry();
        let ([_, in_w], [oh, ow]) = self.rows.sizes();
        let (n, oy) = (row / oh, row % oh);
        let ([kh, kw], [dh, dw], sw) = (g.kernel, g.dilation, g.stride[1]);
        let (c_in, c_out) = (g.in_channels, g.out_channels);
        let ((y0, _), pl) = (self.rows.origin([n, oy, 0]), g.padding[1]);
        // Interior pixels `lo..hi`: every tap column `ox·sw − pl + kx·dw` inside `0..in_w`.
        let span = (kw - 1) * dw;
        let lo = pl.div_ceil(sw).min(ow);
        let hi = (in_w + pl)
            .checked_sub(span + 1)
            .map_or(0, |last| (last / sw + 1).min(ow))
            .max(lo);
        if hi > lo {
            taps.clear();
            taps.extend((0..kh * kw).map(|t| {
                let input = self.rows.input_row(n, y0 + (t / kw * dh) as isize);
                &input.unwrap_or(self.zero_row)[t % kw * dw * c_in..]
            }));
            let window = Window {
                taps,
                offset: (lo * sw - pl) * c_in,
                step: sw * c_in,
            };
            self.pixels(&window, &mut out[lo * c_out..hi * c_out]);
        }
        for ox in (0..lo).chain(hi..ow) {
            let x0 = (ox * sw) as isize - pl as isize;
            taps.clear();
            taps.extend((0..kh * kw).map(|t| {
                let (iy, ix) = (y0 + (t / kw * dh) as isize, x0 + (t % kw * dw) as isize);
                self.rows.pixel(n, iy, ix).unwrap_or(&self.zero_row[..c_in])
            }));
            let window = Window {
                taps,
                offset: 0,
                step: 0,
            };
            self.pixels(&window, &mut out[ox * c_out..][..c_out]);
        }
    }

    /// The output pixels of `window` into `out` (`[pixels, C_out]`), on the fastest kernel.
    fn pixels(&self, window: &Window<'_, '_>, out: &mut [u8]) {
        let (packed, g) = (self.packed, self.rows.geometry());
        window.check(packed, g.in_channels, self.epilogue, out);
        let mut first_channel = 0;
        #[cfg(target_arch = "x86_64")]
        if g.in_channels == g.out_channels {
            let (sat, ep) = (packed.saturate_pairs, self.epilogue);
            if let Some(m) = self.vnni_multipliers {
                assert_eq!(m.len(), packed.quad_bias.len(), "multipliers in quad order");
                // SAFETY: `run` sets the multipliers only on the AVX-512 tier (F/BW/VL) with
                // VNNI detected, for exact layers without a multiplier; the assertions are the
                // kernel's length contract.
                return unsafe { avx512vnni::pixels(packed, window, ep, m, out) };
            }
            match self.tier {
                // SAFETY: the tier comes from an available ISA, which implies AVX-512 F/BW/VL;
                // the assertion above is the kernel's length contract.
                Tier::Avx512 => {
                    return unsafe { by_saturation!(sat, avx512::pixels(packed, window, ep, out)) };
                }
                // SAFETY: the tier comes from an available ISA, which implies AVX2; the
                // assertion above is the kernel's length contract.
                Tier::Avx2 => {
                    first_channel =
                        unsafe { by_saturation!(sat, avx2::pixels(packed, window, ep, out)) }
                }
                Tier::Base => {}
            }
        }
        let multiplier = g.out_channels / g.in_channels;
        scalar::pixels(
            self.tier,
            packed,
            window,
            self.epilogue,
            multiplier,
            first_channel,
            out,
        );
    }
}

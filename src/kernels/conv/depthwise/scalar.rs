//! The portable depthwise kernel: the module's arithmetic written out loop by loop, compiled
//! per tier (every tier computes the same integers). It runs every window on the baseline tier,
//! with a channel multiplier, and the last `C % 8` channels of the AVX2 tier; it is the oracle
//! the SIMD kernels are tested against.

use super::{PackedDepthwise, Window};
use crate::kernels::params::{Epilogue, requantize_parts};
use crate::kernels::simd::multiversion;

/// Channels accumulated at once (a stack array).
const CHUNK: usize = 64;

multiversion! {
    /// Channels `first_channel..` of the output pixels of `window` into `out` (`[pixels, C_out]`,
    /// lengths checked by the caller), with `C_out = multiplier·C_in`.
    pub(super) fn pixels(
        packed: &PackedDepthwise,
        window: &Window<'_, '_>,
        epilogue: &Epilogue,
        multiplier: usize,
        first_channel: usize,
        out: &mut [u8]
    ) {
        let channels = packed.bias.len();
        for (j, out) in out.chunks_exact_mut(channels).enumerate() {
            let at = window.offset + j * window.step;
            for c0 in (first_channel..channels).step_by(CHUNK) {
                let n = (channels - c0).min(CHUNK);
                let mut acc = [0i32; CHUNK];
                let acc = &mut acc[..n];
                acc.copy_from_slice(&packed.bias[c0..][..n]);
                accumulate(packed, window.taps, at, multiplier, c0, acc);
                let m = &epilogue.multipliers[c0..][..n];
                for ((out, &acc), &m) in out[c0..][..n].iter_mut().zip(&*acc).zip(m) {
                    let (z, lo, hi) = (epilogue.zero_point, epilogue.lo, epilogue.hi);
                    *out = requantize_parts(acc, m, z, lo, hi);
                }
            }
        }
    }
}

/// `acc[i] += Σ_pairs` for channels `c0 + i`, the taps read at `taps[t][at..]`.
#[inline(always)]
fn accumulate(
    packed: &PackedDepthwise,
    taps: &[&[u8]],
    at: usize,
    m: usize,
    c0: usize,
    acc: &mut [i32],
) {
    let (channels, n) = (packed.bias.len(), acc.len());
    let (lo16, hi16) = if packed.saturate_pairs {
        (-32768, 32767)
    } else {
        (i32::MIN, i32::MAX)
    };
    for t0 in (0..taps.len()).step_by(2) {
        let t1 = (t0 + 1).min(taps.len() - 1);
        let (x0, x1) = (&taps[t0][at..], &taps[t1][at..]);
        let w0 = &packed.weights[t0 * channels + c0..][..n];
        // A last odd tap pairs with nothing (`second` is 0).
        let w1 = &packed.weights[t1 * channels + c0..][..n];
        let second = i32::from(t1 > t0);
        let pair = |a0: u8, b0: i8, a1: u8, b1: i8| {
            let sum = i32::from(a0) * i32::from(b0) + second * i32::from(a1) * i32::from(b1);
            sum.clamp(lo16, hi16)
        };
        if m == 1 {
            let lanes = x0[c0..][..n]
                .iter()
                .zip(&x1[c0..][..n])
                .zip(w0.iter().zip(w1));
            for (acc, ((&a0, &a1), (&b0, &b1))) in acc.iter_mut().zip(lanes) {
                *acc = acc.wrapping_add(pair(a0, b0, a1, b1));
            }
        } else {
            for (i, acc) in acc.iter_mut().enumerate() {
                let (c, w) = ((c0 + i) / m, i);
                *acc = acc.wrapping_add(pair(x0[c], w0[w], x1[c], w1[w]));
            }
        }
    }
}

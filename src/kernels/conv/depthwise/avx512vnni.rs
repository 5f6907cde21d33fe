//! The AVX-512 VNNI depthwise kernel for exact arithmetic: 64 channels × [`PIXELS`] output
//! pixels per step, no widening. A 64-byte load of a tap's input holds 4 channels per `i32`
//! lane; `vpdpbusd` with 4 weight vectors, each holding the weights of one of the 4 channels
//! of every lane (zeros elsewhere), accumulates channel `64b + 4k + j` in lane `k` of
//! accumulator `j`. The biases and multipliers come in that order too ([`quad_order`](super::quad_order)); the
//! 4 requantized vectors are interleaved back to channel order before the store.
//!
//! Wrapping `i32` sums do not depend on their order, so this equals the paired sums of the
//! module's definition; fbgemm's saturated pairs run on the [`avx512`](super::avx512) kernel.

use std::arch::x86_64::*;

use super::avx512::requantize;
use super::{PIXELS, PackedDepthwise, Window};
use crate::kernels::params::Epilogue;

/// Every channel of the output pixels of `window` into `out` (`[pixels, C]`); `multipliers`
/// are `epilogue.multipliers` in [`quad_order`](super::quad_order).
///
/// # Safety
/// AVX-512 F/BW/VL and VNNI must be available, `C_in == C_out`, the lengths [`Window::check`]
/// asserts must hold and `multipliers` must hold `C.div_ceil(64)·64` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn pixels(
    packed: &PackedDepthwise,
    window: &Window<'_, '_>,
    epilogue: &Epilogue,
    multipliers: &[f32],
    out: &mut [u8],
) {
    let channels = packed.bias.len();
    let pixels = out.len() / channels;
    for first in (0..pixels).step_by(PIXELS) {
        let count = (pixels - first).min(PIXELS);
        for c in (0..channels).step_by(64) {
            let n = (channels - c).min(64);
            let mask: __mmask64 = if n == 64 { u64::MAX } else { (1 << n) - 1 };
            let at = Step { first, c, mask };
            let quad = Quad {
                packed,
                window,
                epilogue,
                multipliers,
            };
            // SAFETY: the caller's contract; `first + count <= pixels`.
            unsafe {
                if count == PIXELS {
                    block::<PIXELS>(&quad, at, out);
                } else {
                    for first in first..pixels {
                        block::<1>(&quad, Step { first, ..at }, out);
                    }
                }
            }
        }
    }
}

/// The operands of [`pixels`].
struct Quad<'a, 'w, 'b> {
    packed: &'a PackedDepthwise,
    window: &'a Window<'w, 'b>,
    epilogue: &'a Epilogue,
    multipliers: &'a [f32],
}

/// Where a block starts: its first pixel and channel, and the mask of its channels.
#[derive(Clone, Copy)]
struct Step {
    first: usize,
    c: usize,
    mask: __mmask64,
}

/// Output pixels `first..first + P`, channels `c..` (the bytes of `mask`).
///
/// # Safety
/// As for [`pixels`], with `first + P` pixels in `out` and `mask` covering channels `< C`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn block<const P: usize>(
    q: &Quad<'_, '_, '_>,
    Step { first, c, mask }: Step,
    out: &mut [u8],
) {
    let (channels, window) = (q.packed.bias.len(), q.window);
    let blocks = channels.div_ceil(64);
    let at: [usize; P] = std::array::from_fn(|j| window.offset + (first + j) * window.step + c);
    // SAFETY (all loads and stores): the weights, biases and multipliers in quad order hold
    // `blocks·64` values per tap; the input and output are masked to the channels `c..C` that
    // the caller's lengths hold, at pixels below `first + P`.
    unsafe {
        let bias: [__m512i; 4] = std::array::from_fn(|j| {
            _mm512_loadu_si512(q.packed.quad_bias.as_ptr().add(c + 16 * j).cast())
        });
        let mut acc = [bias; P];
        for (t, x) in window.taps.iter().enumerate() {
            let w = q.packed.quads.as_ptr().add((t * blocks + c / 64) * 256);
            let w: [__m512i; 4] = std::array::from_fn(|j| _mm512_loadu_si512(w.add(64 * j).cast()));
            for (acc, &at) in acc.iter_mut().zip(&at) {
                let x = _mm512_maskz_loadu_epi8(mask, x.as_ptr().add(at).cast());
                for (acc, &w) in acc.iter_mut().zip(&w) {
                    *acc = _mm512_dpbusd_epi32(*acc, x, w);
                }
            }
        }
        let m: [__m512; 4] =
            std::array::from_fn(|j| _mm512_loadu_ps(q.multipliers.as_ptr().add(c + 16 * j)));
        for (j, acc) in acc.iter().enumerate() {
            let [q0, q1, q2, q3]: [__m128i; 4] =
                std::array::from_fn(|i| requantize(acc[i], m[i], q.epilogue));
            let (lo01, hi01) = (_mm_unpacklo_epi8(q0, q1), _mm_unpackhi_epi8(q0, q1));
            let (lo23, hi23) = (_mm_unpacklo_epi8(q2, q3), _mm_unpackhi_epi8(q2, q3));
            let bytes = _mm512_inserti32x4::<3>(
                _mm512_inserti32x4::<2>(
                    _mm512_inserti32x4::<1>(
                        _mm512_castsi128_si512(_mm_unpacklo_epi16(lo01, lo23)),
                        _mm_unpackhi_epi16(lo01, lo23),
                    ),
                    _mm_unpacklo_epi16(hi01, hi23),
                ),
                _mm_unpackhi_epi16(hi01, hi23),
            );
            let dst = out.as_mut_ptr().add((first + j) * channels + c);
            _mm512_mask_storeu_epi8(dst.cast(), mask, bytes);
        }
    }
}

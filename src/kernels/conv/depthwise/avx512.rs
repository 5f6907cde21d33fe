//! The AVX-512 depthwise kernel: 16 channels × [`PIXELS`] output pixels per step, the
//! accumulators in registers through every tap pair (see the module docs of `depthwise`).

use std::arch::x86_64::*;

use super::{MAGIC, PIXELS, PackedDepthwise, Window};
use crate::kernels::params::Epilogue;

/// Every channel of the output pixels of `window` into `out` (`[pixels, C]`).
///
/// `SAT`: fbgemm's saturated tap pairs (`packed.saturate_pairs`).
///
/// # Safety
/// AVX-512 F/BW/VL must be available, `C_in == C_out`, and the lengths [`Window::check`] asserts must
/// hold.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn pixels<const SAT: bool>(
    packed: &PackedDepthwise,
    window: &Window<'_, '_>,
    epilogue: &Epilogue,
    out: &mut [u8],
) {
    let channels = packed.bias.len();
    let pixels = out.len() / channels;
    for first in (0..pixels).step_by(PIXELS) {
        let count = (pixels - first).min(PIXELS);
        for c in (0..channels).step_by(16) {
            let n = (channels - c).min(16);
            let mask: __mmask16 = if n == 16 { u16::MAX } else { (1 << n) - 1 };
            let at = Step { first, c, mask };
            // SAFETY: the caller's contract; `first + count <= pixels`, and `c + 16 <= C`
            // where the block is full.
            unsafe {
                if n == 16 {
                    pixel_block::<SAT, true>(packed, window, epilogue, at, count, out);
                } else {
                    pixel_block::<SAT, false>(packed, window, epilogue, at, count, out);
                }
            }
        }
    }
}

/// `count` (at most [`PIXELS`]) output pixels from `at`: one register block if there are
/// [`PIXELS`], else one pixel at a time. `FULL`: all 16 lanes of `at.mask` are set.
///
/// # Safety
/// As for [`block`], with `count` pixels.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
unsafe fn pixel_block<const SAT: bool, const FULL: bool>(
    packed: &PackedDepthwise,
    window: &Window<'_, '_>,
    epilogue: &Epilogue,
    at: Step,
    count: usize,
    out: &mut [u8],
) {
    // SAFETY: the caller's contract.
    unsafe {
        if count == PIXELS {
            block::<PIXELS, SAT, FULL>(packed, window, epilogue, at, out);
        } else {
            for first in at.first..at.first + count {
                block::<1, SAT, FULL>(packed, window, epilogue, Step { first, ..at }, out);
            }
        }
    }
}

/// 16 bytes at `x` (the lanes of `mask`; all 16 if `FULL`), zero-extended to `i32`.
///
/// # Safety
/// The bytes of the lanes read must be readable.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
unsafe fn widen<const FULL: bool>(mask: __mmask16, x: *const u8) -> __m512i {
    // SAFETY: the caller's contract.
    unsafe {
        if FULL {
            _mm512_cvtepu8_epi32(_mm_loadu_si128(x.cast()))
        } else {
            _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, x.cast()))
        }
    }
}

/// Where a block starts: its first pixel and channel, and the mask of its channels.
#[derive(Clone, Copy)]
struct Step {
    first: usize,
    c: usize,
    mask: __mmask16,
}

/// Output pixels `first..first + P`, channels `c..` (the lanes of `mask`).
///
/// # Safety
/// As for [`pixels`], with `first + P` pixels in `out`, `mask` covering channels `< C` and
/// `FULL` only if all its lanes are set.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
unsafe fn block<const P: usize, const SAT: bool, const FULL: bool>(
    packed: &PackedDepthwise,
    window: &Window<'_, '_>,
    epilogue: &Epilogue,
    Step { first, c, mask }: Step,
    out: &mut [u8],
) {
    let (channels, taps) = (packed.bias.len(), window.taps);
    let at: [usize; P] = std::array::from_fn(|j| window.offset + (first + j) * window.step + c);
    let (lo16, hi16) = (_mm512_set1_epi32(-32768), _mm512_set1_epi32(32767));
    // SAFETY (all loads and stores): masked to the channels `c..C` that the caller's lengths
    // hold, at pixels below `first + P`; masked-off lanes are not touched.
    unsafe {
        let mut acc = [_mm512_maskz_loadu_epi32(mask, packed.bias.as_ptr().add(c)); P];
        for (p, w) in packed.pairs.chunks_exact(channels).enumerate() {
            let w = _mm512_maskz_loadu_epi32(mask, w.as_ptr().add(c));
            // A lone last tap reads itself twice; its second weight is 0.
            let x0 = taps[2 * p].as_ptr();
            let x1 = taps[(2 * p + 1).min(taps.len() - 1)].as_ptr();
            for (acc, &at) in acc.iter_mut().zip(&at) {
                let (a, b) = (
                    widen::<FULL>(mask, x0.add(at)),
                    widen::<FULL>(mask, x1.add(at)),
                );
                // `i16` pairs `(x0, x1)` · `(w0, w1)`: the exact pair sum.
                let mut sum = _mm512_madd_epi16(_mm512_or_si512(a, _mm512_slli_epi32::<16>(b)), w);
                if SAT {
                    sum = _mm512_min_epi32(_mm512_max_epi32(sum, lo16), hi16);
                }
                *acc = _mm512_add_epi32(*acc, sum);
            }
        }
        let m = _mm512_maskz_loadu_ps(mask, epilogue.multipliers.as_ptr().add(c));
        for (j, &acc) in acc.iter().enumerate() {
            let q = requantize(acc, m, epilogue);
            let dst = out.as_mut_ptr().add((first + j) * channels + c);
            _mm_mask_storeu_epi8(dst.cast(), mask, q);
        }
    }
}

/// `requantize_parts` lane by lane: `clamp(acc·m)`, rounded half to even, plus `z_y`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
pub(super) fn requantize(acc: __m512i, m: __m512, epilogue: &Epilogue) -> __m128i {
    let (lo, hi) = (_mm512_set1_ps(epilogue.lo), _mm512_set1_ps(epilogue.hi));
    let v = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), m);
    // `if v > lo { v } else { lo }`, then `if v < hi { v } else { hi }`.
    let v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, lo), lo, v);
    let v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, hi), hi, v);
    let magic_bits = _mm512_set1_epi32(MAGIC.to_bits() as i32);
    let rounded = _mm512_sub_epi32(
        _mm512_castps_si512(_mm512_add_ps(v, _mm512_set1_ps(MAGIC))),
        magic_bits,
    );
    _mm512_cvtepi32_epi8(_mm512_add_epi32(
        rounded,
        _mm512_set1_epi32(epilogue.zero_point),
    ))
}

//! The AVX2 depthwise kernel: the AVX-512 kernel's scheme with 8 channels × [`PIXELS`] output
//! pixels per step; the last `C % 8` channels are left to the scalar kernel.

use std::arch::x86_64::*;

use super::{MAGIC, PIXELS, PackedDepthwise, Window};
use crate::kernels::params::Epilogue;

/// Channels `0..C / 8 · 8` of the output pixels of `window` into `out` (`[pixels, C]`);
/// returns `C / 8 · 8`, the first channel it left.
///
/// `SAT`: fbgemm's saturated tap pairs (`packed.saturate_pairs`).
///
/// # Safety
/// AVX2 must be available, `C_in == C_out`, and the lengths [`Window::check`] asserts must
/// hold.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn pixels<const SAT: bool>(
    packed: &PackedDepthwise,
    window: &Window<'_, '_>,
    epilogue: &Epilogue,
    out: &mut [u8],
) -> usize {
    let channels = packed.bias.len();
    let (pixels, whole) = (out.len() / channels, channels / 8 * 8);
    for first in (0..pixels).step_by(PIXELS) {
        for c in (0..whole).step_by(8) {
            // SAFETY: the caller's contract; `c + 8 <= C`, `first + PIXELS <= pixels` for the
            // full block.
            unsafe {
                if first + PIXELS <= pixels {
                    block::<PIXELS, SAT>(packed, window, epilogue, [first, c], out);
                } else {
                    for first in first..pixels {
                        block::<1, SAT>(packed, window, epilogue, [first, c], out);
                    }
                }
            }
        }
    }
    whole
}

/// Output pixels `first..first + P`, channels `c..c + 8`.
///
/// # Safety
/// As for [`pixels`], with `first + P` pixels in `out` and `c + 8 <= C`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn block<const P: usize, const SAT: bool>(
    packed: &PackedDepthwise,
    window: &Window<'_, '_>,
    epilogue: &Epilogue,
    [first, c]: [usize; 2],
    out: &mut [u8],
) {
    let (channels, taps) = (packed.bias.len(), window.taps);
    let at: [usize; P] = std::array::from_fn(|j| window.offset + (first + j) * window.step + c);
    let (lo16, hi16) = (_mm256_set1_epi32(-32768), _mm256_set1_epi32(32767));
    // SAFETY (all loads and stores): 8 channels from `c`, `c + 8 <= C`, which the caller's
    // lengths hold, at pixels below `first + P`.
    unsafe {
        let mut acc = [_mm256_loadu_si256(packed.bias.as_ptr().add(c).cast()); P];
        for (p, w) in packed.pairs.chunks_exact(channels).enumerate() {
            let w = _mm256_loadu_si256(w.as_ptr().add(c).cast());
            // A lone last tap reads itself twice; its second weight is 0.
            let x0 = taps[2 * p].as_ptr();
            let x1 = taps[(2 * p + 1).min(taps.len() - 1)].as_ptr();
            for (acc, &at) in acc.iter_mut().zip(&at) {
                let a = _mm256_cvtepu8_epi32(_mm_loadl_epi64(x0.add(at).cast()));
                let b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(x1.add(at).cast()));
                // `i16` pairs `(x0, x1)` · `(w0, w1)`: the exact pair sum.
                let mut sum = _mm256_madd_epi16(_mm256_or_si256(a, _mm256_slli_epi32::<16>(b)), w);
                if SAT {
                    sum = _mm256_min_epi32(_mm256_max_epi32(sum, lo16), hi16);
                }
                *acc = _mm256_add_epi32(*acc, sum);
            }
        }
        let m = _mm256_loadu_ps(epilogue.multipliers.as_ptr().add(c));
        for (j, &acc) in acc.iter().enumerate() {
            let q = requantize(acc, m, epilogue);
            _mm_storel_epi64(out.as_mut_ptr().add((first + j) * channels + c).cast(), q);
        }
    }
}

/// `requantize_parts` lane by lane into the low 8 bytes: `clamp(acc·m)`, rounded half to
/// even, plus `z_y` (in `0..=255`, so the saturating packs keep it).
#[target_feature(enable = "avx2")]
#[inline]
fn requantize(acc: __m256i, m: __m256, epilogue: &Epilogue) -> __m128i {
    let v = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), m);
    // `maxps`/`minps`: `if v > lo { v } else { lo }`, then `if v < hi { v } else { hi }`.
    let v = _mm256_max_ps(v, _mm256_set1_ps(epilogue.lo));
    let v = _mm256_min_ps(v, _mm256_set1_ps(epilogue.hi));
    let magic_bits = _mm256_set1_epi32(MAGIC.to_bits() as i32);
    let rounded = _mm256_sub_epi32(
        _mm256_castps_si256(_mm256_add_ps(v, _mm256_set1_ps(MAGIC))),
        magic_bits,
    );
    let q = _mm256_add_epi32(rounded, _mm256_set1_epi32(epilogue.zero_point));
    let words = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
    _mm_packus_epi16(words, words)
}

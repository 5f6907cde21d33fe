//! 16-bit values at the float boundary, and their bytes in an arena.

use rayon::prelude::*;

use super::WideQParams;
use crate::kernels::active_isa;
use crate::kernels::params::expect_len;
use crate::kernels::simd::{Tier, multiversion};
use crate::{Error, Result};

/// Quantizes `[n, c, plane]` float values (NCHW; a row-major 2-D tensor is `[rows, features,
/// 1]`) into `[n, plane, c]` `u16` values (NHWC):
/// `clamp(round_half_even(fma(x, 1/s, z)), 0, 65535)`, NaN → 65535; `Ok(false)` when a value
/// is not finite (checked in the same pass).
pub fn quantize_wide(
    x: &[f32],
    [n, c, plane]: [usize; 3],
    qp: WideQParams,
    out: &mut [u16],
) -> Result<bool> {
    qp.check("quantize")?;
    expect_len("wide quantize input", x.len(), n * c * plane)?;
    expect_len("wide quantize output", out.len(), n * c * plane)?;
    let (inv, zero) = (1.0 / qp.scale, f32::from(qp.zero_point));
    let tier = Tier::of(active_isa());
    Ok(out
        .par_chunks_mut((plane * c).max(1))
        .zip(x.par_chunks((plane * c).max(1)))
        .map(|(out, x)| quantize_image(tier, x, c, inv, zero, out))
        .reduce(|| true, |a, b| a & b))
}

multiversion! {
    /// One image of [`quantize_wide`]: `c` planes of `x` into interleaved pixels.
    fn quantize_image(x: &[f32], c: usize, inv: f32, zero: f32, out: &mut [u16]) -> bool {
        let plane = x.len() / c.max(1);
        let mut finite = true;
        for (i, pixel) in out.chunks_exact_mut(c).enumerate() {
            for (ch, out) in pixel.iter_mut().enumerate() {
                let x = x[ch * plane + i];
                finite &= x.is_finite();
                let v = x.mul_add(inv, zero);
                let v = if v < 65535.0 { v } else { 65535.0 };
                let v = if v > 0.0 { v } else { 0.0 };
                *out = v.round_ties_even() as u16;
            }
        }
        finite
    }
}

/// Dequantizes `[n, plane, c]` `u16` values (NHWC) into `[n, c, plane]` floats (NCHW):
/// `s · f32(q − z)`.
pub fn dequantize_wide(
    q: &[u16],
    [n, c, plane]: [usize; 3],
    qp: WideQParams,
    out: &mut [f32],
) -> Result<()> {
    qp.check("dequantize")?;
    expect_len("wide dequantize input", q.len(), n * c * plane)?;
    expect_len("wide dequantize output", out.len(), n * c * plane)?;
    let zero = i32::from(qp.zero_point);
    out.par_chunks_mut((plane * c).max(1))
        .zip(q.par_chunks((plane * c).max(1)))
        .for_each(|(out, q)| {
            for (ch, out) in out.chunks_exact_mut(plane).enumerate() {
                for (i, out) in out.iter_mut().enumerate() {
                    *out = qp.scale * (i32::from(q[i * c + ch]) - zero) as f32;
                }
            }
        });
    Ok(())
}

/// The `u16` values held by `bytes` (an arena slot: 2-byte aligned, even length).
pub fn as_u16(bytes: &[u8]) -> Result<&[u16]> {
    // SAFETY: every bit pattern is a valid `u16`; `align_to` puts in the middle only what is
    // aligned and whole, and the empty prefix and suffix checked below mean all bytes are in it.
    let (before, values, after) = unsafe { bytes.align_to::<u16>() };
    if before.is_empty() && after.is_empty() {
        Ok(values)
    } else {
        Err(misaligned())
    }
}

/// The `u16` values held by `bytes`, mutably (as [`as_u16`]).
pub fn as_u16_mut(bytes: &mut [u8]) -> Result<&mut [u16]> {
    // SAFETY: as in `as_u16`; the borrow is unique.
    let (before, values, after) = unsafe { bytes.align_to_mut::<u16>() };
    if before.is_empty() && after.is_empty() {
        Ok(values)
    } else {
        Err(misaligned())
    }
}

fn misaligned() -> Error {
    Error::InvalidArgument(
        "a 16-bit value's bytes are not 2-byte aligned or have an odd length".into(),
    )
}

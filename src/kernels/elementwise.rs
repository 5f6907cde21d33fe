//! Elementwise quantized ops with PyTorch's x86 (fbgemm) arithmetic, exactly:
//!
//! * quantize (`quantize_per_tensor` → `fbgemm::Quantize`, AVX2 path):
//!   `q = clamp(round_half_even(fma(x, 1/s, z)), 0, 255)` with `1/s` rounded to `f32` first and
//!   one fused multiply-add; NaN → 255, as `vminps` does there.
//! * dequantize (`fbgemm::Dequantize`): `x = s · f32(q − z)`.
//! * add, sub, mul (with broadcasting): see [`super::binary`].
//! * requantize / cat (`quantized::cat` on NCHW inputs: dequantize, then quantize):
//!   `q' = quantize(dequantize(q, from), to)`; a plain copy when `from == to`, which that formula
//!   reproduces exactly.
//!
//! The loops are plain Rust compiled per tier ([`multiversion`]); all tiers give the same bytes.

use rayon::prelude::*;

use super::active_isa;
use super::params::{QParams, expect_len, quantize_one};
use super::simd::{Tier, multiversion};
use crate::{Error, Result};

/// Elements per parallel task.
pub(crate) const CHUNK: usize = 1 << 16;

/// The tier of the active ISA path.
pub(crate) fn tier() -> Tier {
    Tier::of(active_isa())
}

/// Quantizes `x` into `out` (same length): `clamp(round_half_even(fma(x, 1/s, z)), 0, 255)`.
/// `Ok(false)` when a value of `x` is not finite (NaN or infinite; quantized all the same, as
/// PyTorch does): the check rides in the same pass.
pub fn quantize(x: &[f32], qp: QParams, out: &mut [u8]) -> Result<bool> {
    qp.check("quantize")?;
    expect_len("quantize output", out.len(), x.len())?;
    let tier = tier();
    let (inv, zero) = (1.0 / qp.scale, f32::from(qp.zero_point));
    Ok(out
        .par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .map(|(out, x)| quantize_slice(tier, x, inv, zero, out))
        .reduce(|| true, |a, b| a & b))
}

multiversion! {
    /// [`quantize`] of one slice; whether every value was finite.
    pub(crate) fn quantize_slice(x: &[f32], inv: f32, zero: f32, out: &mut [u8]) -> bool {
        let mut finite = true;
        for (out, &x) in out.iter_mut().zip(x) {
            *out = quantize_one(x, inv, zero);
            finite &= x.is_finite();
        }
        finite
    }
}

/// Dequantizes `q` into `out` (same length): `s · f32(q − z)`.
pub fn dequantize(q: &[u8], qp: QParams, out: &mut [f32]) -> Result<()> {
    qp.check("dequantize")?;
    expect_len("dequantize output", out.len(), q.len())?;
    let tier = tier();
    out.par_chunks_mut(CHUNK)
        .zip(q.par_chunks(CHUNK))
        .for_each(|(out, q)| dequantize_slice(tier, q, qp, out));
    Ok(())
}

multiversion! {
    fn dequantize_slice(q: &[u8], qp: QParams, out: &mut [f32]) {
        let zero = i32::from(qp.zero_point);
        for (out, &q) in out.iter_mut().zip(q) {
            *out = qp.scale * (i32::from(q) - zero) as f32;
        }
    }
}

/// Quantizes an NCHW `f32` tensor `[n, c, h, w]` into an NHWC `u8` tensor `[n, h, w, c]`
/// (arithmetic of [`quantize`]); `Ok(false)` when a value is not finite.
pub fn quantize_nchw_to_nhwc(
    x: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    qp: QParams,
    out: &mut [u8],
) -> Result<bool> {
    qp.check("quantize")?;
    expect_len("quantize input", x.len(), n * c * h * w)?;
    expect_len("quantize output", out.len(), n * c * h * w)?;
    let (tier, inv, zero) = (tier(), 1.0 / qp.scale, f32::from(qp.zero_point));
    Ok(out
        .par_chunks_mut((w * c).max(1))
        .enumerate()
        .map(|(row, out)| {
            let (image, y) = (row / h, row % h);
            let planes = &x[image * c * h * w..][..c * h * w];
            quantize_to_pixels(tier, planes, h * w, y * w, inv, zero, out)
        })
        .reduce(|| true, |a, b| a & b))
}

multiversion! {
    /// Quantizes pixels `first..` of the channel planes `planes` (`c × plane` values) into
    /// interleaved pixels (`out`, `c` bytes each).
    fn quantize_to_pixels(planes: &[f32], plane: usize, first: usize, inv: f32, zero: f32, out: &mut [u8]) -> bool {
        let c = planes.len() / plane;
        let mut finite = true;
        for (i, pixel) in out.chunks_exact_mut(c).enumerate() {
            for (ch, out) in pixel.iter_mut().enumerate() {
                let x = planes[ch * plane + first + i];
                *out = quantize_one(x, inv, zero);
                finite &= x.is_finite();
            }
        }
        finite
    }
}

/// Dequantizes an NHWC `u8` tensor `[n, h, w, c]` into an NCHW `f32` tensor `[n, c, h, w]`
/// (arithmetic of [`dequantize`]).
pub fn dequantize_nhwc_to_nchw(
    q: &[u8],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    qp: QParams,
    out: &mut [f32],
) -> Result<()> {
    qp.check("dequantize")?;
    expect_len("dequantize input", q.len(), n * h * w * c)?;
    expect_len("dequantize output", out.len(), n * h * w * c)?;
    let tier = tier();
    out.par_chunks_mut((h * w).max(1))
        .enumerate()
        .for_each(|(plane, out)| {
            let (image, ch) = (plane / c, plane % c);
            dequantize_channel(tier, &q[image * h * w * c..][..h * w * c], ch, qp, out);
        });
    Ok(())
}

multiversion! {
    /// Dequantizes channel `ch` of interleaved pixels (`pixels`, `out.len()` of them) into `out`.
    fn dequantize_channel(pixels: &[u8], ch: usize, qp: QParams, out: &mut [f32]) {
        let (c, zero) = (pixels.len() / out.len(), i32::from(qp.zero_point));
        for (i, out) in out.iter_mut().enumerate() {
            *out = qp.scale * (i32::from(pixels[i * c + ch]) - zero) as f32;
        }
    }
}

/// Requantizes `input` from `from` to `to` into `out` (same length):
/// `quantize(dequantize(q, from), to)`, a copy when `from == to`.
pub fn requantize_u8(input: &[u8], from: QParams, to: QParams, out: &mut [u8]) -> Result<()> {
    expect_len("requantize output", out.len(), input.len())?;
    let map = Requantizer::new(from, to)?;
    let tier = tier();
    out.par_chunks_mut(CHUNK)
        .zip(input.par_chunks(CHUNK))
        .for_each(|(out, input)| requantize_slice(tier, input, &map, out));
    Ok(())
}

/// The constants of a `from → to` requantization.
struct Requantizer {
    identity: bool,
    scale: f32,
    zero: i32,
    inv_to: f32,
    zero_to: f32,
}

impl Requantizer {
    fn new(from: QParams, to: QParams) -> Result<Self> {
        from.check("requantize input")?;
        to.check("requantize output")?;
        Ok(Requantizer {
            identity: from == to,
            scale: from.scale,
            zero: i32::from(from.zero_point),
            inv_to: 1.0 / to.scale,
            zero_to: f32::from(to.zero_point),
        })
    }
}

multiversion! {
    fn requantize_slice(input: &[u8], map: &Requantizer, out: &mut [u8]) {
        if map.identity {
            out.copy_from_slice(input);
            return;
        }
        for (out, &q) in out.iter_mut().zip(input) {
            let x = map.scale * (i32::from(q) - map.zero) as f32;
            *out = quantize_one(x, map.inv_to, map.zero_to);
        }
    }
}

/// One input of [`qcat`]: `pixels × channels` NHWC values with their quantization.
#[derive(Clone, Copy, Debug)]
pub struct CatInput<'a> {
    /// The values, `channels` per pixel.
    pub data: &'a [u8],
    /// Channels per pixel.
    pub channels: usize,
    /// The input's quantization.
    pub qparams: QParams,
}

/// Concatenates NHWC tensors along the channel (last) axis into `out`
/// (`pixels × Σ channels`), each input requantized to `out_qp` as [`requantize_u8`] does.
pub fn qcat(inputs: &[CatInput<'_>], pixels: usize, out_qp: QParams, out: &mut [u8]) -> Result<()> {
    let total: usize = inputs.iter().map(|input| input.channels).sum();
    if total == 0 {
        return Err(Error::InvalidArgument(
            "cat of inputs without channels".into(),
        ));
    }
    for input in inputs {
        expect_len("cat input", input.data.len(), pixels * input.channels)?;
    }
    expect_len("cat output", out.len(), pixels * total)?;
    let maps = inputs
        .iter()
        .map(|input| Requantizer::new(input.qparams, out_qp))
        .collect::<Result<Vec<_>>>()?;
    let tier = tier();
    out.par_chunks_mut(total)
        .enumerate()
        .for_each(|(pixel, mut out)| {
            for (input, map) in inputs.iter().zip(&maps) {
                let (dst, rest) = out.split_at_mut(input.channels);
                requantize_slice(
                    tier,
                    &input.data[pixel * input.channels..][..input.channels],
                    map,
                    dst,
                );
                out = rest;
            }
        });
    Ok(())
}

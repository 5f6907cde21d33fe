//! Quantized pooling on NHWC `u8` images, with PyTorch's (fbgemm engine, channels-last)
//! arithmetic:
//!
//! * max pool: the largest value of each window's valid positions (padding never wins);
//! * average pool (`qavg_pool2d_nhwc_kernel`): `acc = Σ q − size·z_in` over the window's valid
//!   positions, `m = (s_in / s_out) / divisor` in `f32` (`divisor` is the window size clipped to
//!   the padded image if `count_include_pad`, else the number of valid positions), then
//!   [`crate::kernels::requantize`]`(acc, m, z_out, 0, 255)`;
//! * global average pool (`adaptive_avg_pool2d` to 1×1): the same with `divisor = h·w`, except
//!   that PyTorch quantizes with scale `1/m`, so the multiplier used is `1 / (1 / m)` (two `f32`
//!   divisions).
//!
//! Output sizes follow PyTorch's `pooling_output_shape` (floor or ceil mode).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::active_isa;
use super::params::{QParams, expect_len, requantize_parts};
use super::simd::{Tier, multiversion};
use crate::{Error, Result};

/// A max-pooling window (PyTorch `MaxPool2d`; padding is symmetric per axis).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MaxPool2d {
    /// Window height and width.
    pub kernel: [usize; 2],
    /// Vertical and horizontal stride.
    pub stride: [usize; 2],
    /// Padding on each side, vertical and horizontal (at most half the kernel size).
    pub padding: [usize; 2],
    /// Vertical and horizontal dilation.
    pub dilation: [usize; 2],
    /// Round the output size up instead of down.
    pub ceil_mode: bool,
}

/// An average-pooling window (PyTorch `AvgPool2d`, without `divisor_override`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AvgPool2d {
    /// Window height and width.
    pub kernel: [usize; 2],
    /// Vertical and horizontal stride.
    pub stride: [usize; 2],
    /// Padding on each side, vertical and horizontal (at most half the kernel size).
    pub padding: [usize; 2],
    /// Round the output size up instead of down.
    pub ceil_mode: bool,
    /// Divide by the padded window size instead of the number of valid positions.
    pub count_include_pad: bool,
}

/// One axis of a pooling window.
#[derive(Clone, Copy)]
struct Axis {
    size: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
    out: usize,
}

impl Axis {
    /// PyTorch's `pooling_output_shape` plus its argument checks.
    fn new(
        size: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
        dilation: usize,
        ceil: bool,
    ) -> Result<Self> {
        let span = dilation * kernel.saturating_sub(1) + 1;
        if kernel == 0 || stride == 0 || dilation == 0 || size == 0 {
            return Err(Error::InvalidArgument(format!(
                "pooling needs a non-empty input and non-zero kernel, stride and dilation \
                 (size {size}, kernel {kernel}, stride {stride}, dilation {dilation})"
            )));
        }
        if pad > kernel / 2 {
            return Err(Error::InvalidArgument(format!(
                "pooling padding {pad} is more than half the kernel size {kernel}"
            )));
        }
        if size + 2 * pad < span {
            return Err(Error::Shape {
                context: "pooling input".into(),
                expected: format!("at least {span} positions with padding {pad}"),
                got: format!("{size}"),
            });
        }
        let mut out = (size + 2 * pad - span + if ceil { stride - 1 } else { 0 }) / stride + 1;
        if ceil && (out - 1) * stride >= size + pad {
            out -= 1;
        }
        Ok(Axis {
            size,
            kernel,
            stride,
            pad,
            dilation,
            out,
        })
    }

    /// Valid input positions of output `o` for max pooling: `(start, end, step)`.
    fn max_range(&self, o: usize) -> (usize, usize, usize) {
        let mut start = (o * self.stride) as isize - self.pad as isize;
        let end =
            (start + ((self.kernel - 1) * self.dilation) as isize + 1).min(self.size as isize);
        while start < 0 {
            start += self.dilation as isize;
        }
        (start as usize, end.max(start) as usize, self.dilation)
    }

    /// Valid input range of output `o` for average pooling, and the window length clipped to
    /// the padded input.
    fn avg_range(&self, o: usize) -> (usize, usize, usize) {
        let start = (o * self.stride) as isize - self.pad as isize;
        let end = (start + self.kernel as isize).min((self.size + self.pad) as isize);
        let padded = (end - start) as usize;
        (
            start.max(0) as usize,
            end.min(self.size as isize) as usize,
            padded,
        )
    }
}

/// Output height and width of a max pool on an `h × w` input.
pub fn max_pool_output_size(h: usize, w: usize, pool: &MaxPool2d) -> Result<(usize, usize)> {
    let (y, x) = max_axes(h, w, pool)?;
    Ok((y.out, x.out))
}

/// Output height and width of an average pool on an `h × w` input.
pub fn avg_pool_output_size(h: usize, w: usize, pool: &AvgPool2d) -> Result<(usize, usize)> {
    let (y, x) = avg_axes(h, w, pool)?;
    Ok((y.out, x.out))
}

fn max_axes(h: usize, w: usize, p: &MaxPool2d) -> Result<(Axis, Axis)> {
    let axis = |i: usize, size| {
        Axis::new(
            size,
            p.kernel[i],
            p.stride[i],
            p.padding[i],
            p.dilation[i],
            p.ceil_mode,
        )
    };
    Ok((axis(0, h)?, axis(1, w)?))
}

fn avg_axes(h: usize, w: usize, p: &AvgPool2d) -> Result<(Axis, Axis)> {
    let axis =
        |i: usize, size| Axis::new(size, p.kernel[i], p.stride[i], p.padding[i], 1, p.ceil_mode);
    Ok((axis(0, h)?, axis(1, w)?))
}

/// Max pooling of `input` `[batch, h, w, channels]` into `out` `[batch, oh, ow, channels]`;
/// the output keeps the input's quantization.
pub fn qmax_pool2d(
    input: &[u8],
    batch: usize,
    h: usize,
    w: usize,
    channels: usize,
    pool: &MaxPool2d,
    out: &mut [u8],
) -> Result<()> {
    let job = Job::checked(
        "max pool",
        input,
        batch,
        channels,
        max_axes(h, w, pool)?,
        out,
    )?;
    let tier = Tier::of(active_isa());
    job.for_each_row(out, |row, out| max_row(tier, &job, row, out));
    Ok(())
}

/// Average pooling of `input` `[batch, h, w, channels]` (quantized with `from`) into `out`
/// `[batch, oh, ow, channels]` quantized with `to`.
#[allow(clippy::too_many_arguments)]
pub fn qavg_pool2d(
    input: &[u8],
    batch: usize,
    h: usize,
    w: usize,
    channels: usize,
    pool: &AvgPool2d,
    from: QParams,
    to: QParams,
    out: &mut [u8],
) -> Result<()> {
    from.check("avg pool input")?;
    to.check("avg pool output")?;
    let job = Job::checked(
        "avg pool",
        input,
        batch,
        channels,
        avg_axes(h, w, pool)?,
        out,
    )?;
    let scale = AvgScale {
        ratio: from.scale / to.scale,
        count_include_pad: pool.count_include_pad,
        zero_in: from.zero_point,
        zero_out: to.zero_point,
    };
    let tier = Tier::of(active_isa());
    job.for_each_row(out, |row, out| avg_row(tier, &job, &scale, row, out));
    Ok(())
}

/// Global average pooling: `input` `[batch, h, w, channels]` → `out` `[batch, channels]`.
#[allow(clippy::too_many_arguments)]
pub fn qglobal_avg_pool(
    input: &[u8],
    batch: usize,
    h: usize,
    w: usize,
    channels: usize,
    from: QParams,
    to: QParams,
    out: &mut [u8],
) -> Result<()> {
    from.check("global avg pool input")?;
    to.check("global avg pool output")?;
    if h == 0 || w == 0 {
        return Err(Error::InvalidArgument(
            "global average pool of an empty image".into(),
        ));
    }
    expect_len(
        "global avg pool input",
        input.len(),
        batch * h * w * channels,
    )?;
    expect_len("global avg pool output", out.len(), batch * channels)?;
    let size = h * w;
    let multiplier = 1.0 / (1.0 / ((from.scale / to.scale) / size as f32));
    let tier = Tier::of(active_isa());
    out.par_chunks_mut(channels.max(1))
        .enumerate()
        .for_each(|(image, out)| {
            let pixels = &input[image * size * channels..][..size * channels];
            global_avg(
                tier,
                pixels,
                from.zero_point,
                multiplier,
                to.zero_point,
                out,
            )
        });
    Ok(())
}

/// How an average is requantized.
struct AvgScale {
    /// `s_in / s_out`.
    ratio: f32,
    count_include_pad: bool,
    zero_in: u8,
    zero_out: u8,
}

/// Everything a pooling row task reads.
struct Job<'a> {
    input: &'a [u8],
    channels: usize,
    y: Axis,
    x: Axis,
}

impl<'a> Job<'a> {
    /// A pooling of `input` `[batch, y.size, x.size, channels]` into `out`, with the lengths of
    /// both checked (`what` names the op in the error).
    fn checked(
        what: &str,
        input: &'a [u8],
        batch: usize,
        channels: usize,
        (y, x): (Axis, Axis),
        out: &[u8],
    ) -> Result<Self> {
        let pixels = |a: usize, b: usize| batch * a * b * channels;
        expect_len(
            &format!("{what} input"),
            input.len(),
            pixels(y.size, x.size),
        )?;
        expect_len(&format!("{what} output"), out.len(), pixels(y.out, x.out))?;
        Ok(Job {
            input,
            channels,
            y,
            x,
        })
    }

    /// Runs `row(index, output row)` over the output rows of `out`, in parallel.
    fn for_each_row(&self, out: &mut [u8], row: impl Fn(usize, &mut [u8]) + Sync + Send) {
        out.par_chunks_mut((self.x.out * self.channels).max(1))
            .enumerate()
            .for_each(|(index, out)| row(index, out));
    }

    /// The input pixel `(image, iy, ix)`.
    fn pixel(&self, image: usize, iy: usize, ix: usize) -> &[u8] {
        let c = self.channels;
        &self.input[((image * self.y.size + iy) * self.x.size + ix) * c..][..c]
    }
}

multiversion! {
    /// Output row `row` (`image·oh + oy`) of a max pool.
    fn max_row(job: &Job<'_>, row: usize, out: &mut [u8]) {
        let (image, oy) = (row / job.y.out, row % job.y.out);
        let (y0, y1, dy) = job.y.max_range(oy);
        for (ox, out) in out.chunks_exact_mut(job.channels).enumerate() {
            let (x0, x1, dx) = job.x.max_range(ox);
            out.fill(0);
            for iy in (y0..y1).step_by(dy) {
                for ix in (x0..x1).step_by(dx) {
                    for (out, &v) in out.iter_mut().zip(job.pixel(image, iy, ix)) {
                        *out = (*out).max(v);
                    }
                }
            }
        }
    }
}

multiversion! {
    /// Output row `row` (`image·oh + oy`) of an average pool.
    fn avg_row(job: &Job<'_>, scale: &AvgScale, row: usize, out: &mut [u8]) {
        let (image, oy) = (row / job.y.out, row % job.y.out);
        let (y0, y1, padded_h) = job.y.avg_range(oy);
        let z = i32::from(scale.zero_out);
        let (lo, hi) = (-z as f32, (255 - z) as f32);
        let mut acc = vec![0i32; job.channels];
        for (ox, out) in out.chunks_exact_mut(job.channels).enumerate() {
            let (x0, x1, padded_w) = job.x.avg_range(ox);
            let size = (y1 - y0) * (x1 - x0);
            let divisor = if scale.count_include_pad { padded_h * padded_w } else { size };
            let multiplier = scale.ratio / divisor as f32;
            acc.fill(-(size as i32) * i32::from(scale.zero_in));
            for iy in y0..y1 {
                for ix in x0..x1 {
                    for (acc, &v) in acc.iter_mut().zip(job.pixel(image, iy, ix)) {
                        *acc += i32::from(v);
                    }
                }
            }
            for (out, &acc) in out.iter_mut().zip(&acc) {
                *out = requantize_parts(acc, multiplier, z, lo, hi);
            }
        }
    }
}

multiversion! {
    /// One image of a global average pool: `pixels` is `[h·w, channels]`.
    fn global_avg(pixels: &[u8], zero_in: u8, multiplier: f32, zero_out: u8, out: &mut [u8]) {
        let size = pixels.len() / out.len().max(1);
        let mut acc = vec![-(size as i32) * i32::from(zero_in); out.len()];
        for pixel in pixels.chunks_exact(out.len().max(1)) {
            for (acc, &v) in acc.iter_mut().zip(pixel) {
                *acc += i32::from(v);
            }
        }
        let z = i32::from(zero_out);
        for (out, &acc) in out.iter_mut().zip(&acc) {
            *out = requantize_parts(acc, multiplier, z, -z as f32, (255 - z) as f32);
        }
    }
}

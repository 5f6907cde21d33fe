//! Wide convolutions: im2col rows made block by block for the wide GEMM, and a direct
//! depthwise kernel.

use rayon::prelude::*;

use super::gemm::{WideGemm, check_zero_point, kernel};
use super::pack::PackedWide;
use super::{Expanded, RequantWide, WideInput, WideOutput, accumulate};
use crate::Result;
use crate::kernels::Conv2dGeometry;
use crate::kernels::active_isa;
use crate::kernels::params::expect_len;
use crate::kernels::simd::Tier;

/// A convolution's weights packed for the wide kernels.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedWideConv2d {
    geometry: Conv2dGeometry,
    weights: Weights,
}

#[derive(Clone, Debug, PartialEq)]
enum Weights {
    /// Im2col rows times packed weights, group by group.
    Gemm(PackedWide),
    /// One filter per channel: tap `t` of channel `c` at `taps[(t·PIXELS + p)·C + c]` for every
    /// `p < PIXELS` (each tap's weights repeated for [`PIXELS`] pixels), with `bias[c]`.
    Depthwise { taps: Vec<i32>, bias: Vec<i64> },
}

impl PackedWideConv2d {
    /// Packs `weight` (`[out, in/groups, kh, kw]`, PyTorch's layout) and `bias` (`[out]`).
    pub fn new(geometry: Conv2dGeometry, weight: &[i16], bias: &[i32]) -> Result<Self> {
        geometry.check()?;
        let g = &geometry;
        let [kh, kw] = g.kernel;
        let per_group = g.in_channels / g.groups;
        expect_len(
            "wide conv2d weight",
            weight.len(),
            g.out_channels * per_group * kh * kw,
        )?;
        expect_len("wide conv2d bias", bias.len(), g.out_channels)?;
        let max_abs = weight
            .iter()
            .map(|&w| i64::from(w).abs())
            .max()
            .unwrap_or(0);
        let depthwise = g.groups == g.in_channels
            && g.groups == g.out_channels
            && (kh * kw) as i64 * 65535 * max_abs < 1 << 31;
        let weights = if depthwise {
            let c = g.out_channels;
            let taps = (0..kh * kw * PIXELS * c)
                .map(|i| i32::from(weight[(i % c) * kh * kw + i / (PIXELS * c)]))
                .collect();
            Weights::Depthwise {
                taps,
                bias: bias.iter().map(|&b| i64::from(b)).collect(),
            }
        } else {
            let out_per_group = g.out_channels / g.groups;
            let packed = PackedWide::new(
                g.groups,
                kh * kw * per_group,
                out_per_group,
                bias,
                |grp, col, k| {
                    let (tap, c) = (k / per_group, k % per_group);
                    weight[((grp * out_per_group + col) * per_group + c) * kh * kw + tap]
                },
            )?;
            Weights::Gemm(packed)
        };
        Ok(PackedWideConv2d { geometry, weights })
    }

    /// The convolution's shape.
    pub fn geometry(&self) -> &Conv2dGeometry {
        &self.geometry
    }
}

/// A wide convolution of `batch` NHWC images of `h × w` (inputs of type `I`, zero point
/// `zero_point`, which padding reads) into NHWC outputs of type `O`.
#[allow(clippy::too_many_arguments)]
pub fn qconv2d_wide<I: WideInput, O: WideOutput>(
    input: &[I],
    [batch, h, w]: [usize; 3],
    zero_point: u16,
    conv: &PackedWideConv2d,
    requant: &RequantWide,
    out: &mut [O],
) -> Result<()> {
    let g = &conv.geometry;
    let (oh, ow) = g.output_size(h, w)?;
    expect_len(
        "wide conv2d input",
        input.len(),
        batch * h * w * g.in_channels,
    )?;
    expect_len(
        "wide conv2d output",
        out.len(),
        batch * oh * ow * g.out_channels,
    )?;
    check_zero_point::<I>(zero_point)?;
    requant.check::<O>(g.out_channels)?;
    let image = Image {
        input,
        size: [h, w],
        out_size: [oh, ow],
        zero_point,
        geometry: g,
    };
    match &conv.weights {
        Weights::Gemm(packed) => {
            let gemm = WideGemm::new::<I>(packed, zero_point, requant);
            let fill = |grp: usize, first: usize, dst: &mut [i16]| image.im2col(grp, first, dst);
            gemm.run(kernel(active_isa()), &fill, out);
        }
        Weights::Depthwise { taps, bias } => {
            let row = Constants {
                bias: bias.repeat(ow),
                requant: requant.expanded(g.out_channels).repeated(ow),
            };
            let scratch = || {
                (
                    vec![0i32; ow * g.out_channels],
                    vec![0i64; ow * g.out_channels],
                )
            };
            out.par_chunks_mut(ow * g.out_channels)
                .enumerate()
                .for_each_init(scratch, |(acc, sums), (r, out)| {
                    image.depthwise_row(r, taps, &row, (acc, sums), out)
                });
        }
    }
    Ok(())
}

/// The input of one convolution call.
struct Image<'a, I> {
    input: &'a [I],
    size: [usize; 2],
    out_size: [usize; 2],
    zero_point: u16,
    geometry: &'a Conv2dGeometry,
}

impl<I: WideInput> Image<'_, I> {
    /// Writes im2col rows `first..` of group `grp` (taps outer, channels inner, as packed) to
    /// `dst`, `dst.len() / rows` values per row, one kernel row (`ky`) at a time.
    fn im2col(&self, grp: usize, first: usize, dst: &mut [i16]) {
        let g = self.geometry;
        let [oh, ow] = self.out_size;
        let [kh, kw] = g.kernel;
        let per_group = g.in_channels / g.groups;
        let k = per_group * kh * kw;
        let lda = k.div_ceil(2) * 2;
        for (i, row) in dst.chunks_exact_mut(lda).enumerate() {
            let r = first + i;
            let (b, oy, ox) = (r / (oh * ow), r / ow % oh, r % ow);
            for (ky, taps) in row[..k].chunks_exact_mut(kw * per_group).enumerate() {
                let y = (oy * g.stride[0] + ky * g.dilation[0]).checked_sub(g.padding[0]);
                match y.filter(|&y| y < self.size[0]) {
                    Some(y) => {
                        self.kernel_row(grp, (b * self.size[0] + y) * self.size[1], ox, taps)
                    }
                    None => taps.fill(self.pad()),
                }
            }
        }
    }

    /// The taps of one kernel row for output column `ox`, reading input line `line` (its
    /// first pixel's index): one copy when the row's pixels lie side by side in the line.
    fn kernel_row(&self, grp: usize, line: usize, ox: usize, taps: &mut [i16]) {
        let g = self.geometry;
        let (c, per_group, w) = (g.in_channels, g.in_channels / g.groups, self.size[1]);
        let x0 = (ox * g.stride[1]).checked_sub(g.padding[1]);
        let span = (g.kernel[1] - 1) * g.dilation[1] + 1;
        match x0 {
            Some(x0) if x0 + span <= w && (g.dilation[1] == 1 && g.groups == 1) => {
                let pixels = &self.input[(line + x0) * c..][..taps.len()];
                for (d, &x) in taps.iter_mut().zip(pixels) {
                    *d = x.to_i16();
                }
            }
            _ => {
                for (kx, tap) in taps.chunks_exact_mut(per_group).enumerate() {
                    let x = (ox * g.stride[1] + kx * g.dilation[1]).checked_sub(g.padding[1]);
                    match x.filter(|&x| x < w) {
                        Some(x) => {
                            let pixel = &self.input[(line + x) * c + grp * per_group..];
                            for (d, &x) in tap.iter_mut().zip(pixel) {
                                *d = x.to_i16();
                            }
                        }
                        None => tap.fill(self.pad()),
                    }
                }
            }
        }
    }

    /// What padding reads: the zero point, offset like every input.
    fn pad(&self) -> i16 {
        (i32::from(self.zero_point) - I::OFFSET) as i16
    }

    /// Output row `row` (image `row / oh`, line `row % oh`) of a depthwise convolution:
    /// `Σ (q_x − z_x)·w` over the taps inside the image, in `i32` (packed only when
    /// `taps·65535·max|w| < 2^31`: 127 taps of `i8` weights), plus the bias, requantized;
    /// `acc` and `sums` are the row's scratch.
    fn depthwise_row<O: WideOutput>(
        &self,
        row: usize,
        taps: &[i32],
        constants: &Constants,
        (acc, sums): (&mut [i32], &mut [i64]),
        out: &mut [O],
    ) {
        let g = self.geometry;
        let (c, [h, w], [oh, ow]) = (g.out_channels, self.size, self.out_size);
        let (b, oy) = (row / oh, row % oh);
        let tier = Tier::of(active_isa());
        acc.fill(0);
        for (t, weights) in taps.chunks_exact(PIXELS * c).enumerate() {
            let [ky, kx] = [t / g.kernel[1], t % g.kernel[1]];
            let Some(y) = (oy * g.stride[0] + ky * g.dilation[0]).checked_sub(g.padding[0]) else {
                continue;
            };
            if y >= h {
                continue;
            }
            // The outputs whose input column `ox·s + kx·d − pad` lies inside the line.
            let (s, offset) = (g.stride[1], kx * g.dilation[1]);
            let first = g.padding[1].saturating_sub(offset).div_ceil(s);
            let end = ((w + g.padding[1]).saturating_sub(offset))
                .div_ceil(s)
                .min(ow);
            if first >= end {
                continue;
            }
            let x0 = first * s + offset - g.padding[1];
            let line = &self.input[((b * h + y) * w + x0) * c..];
            let acc = &mut acc[first * c..end * c];
            accumulate(
                tier,
                acc,
                I::typed(line),
                [c, s],
                i32::from(self.zero_point),
                weights,
            );
        }
        for (sum, &a) in sums.iter_mut().zip(acc.iter()) {
            *sum = i64::from(a);
        }
        let requant = &constants.requant;
        requant.row(tier, sums, &constants.bias, out);
    }
}

/// What every output row of a depthwise call adds and requantizes with, pixel by pixel.
struct Constants {
    /// The bias of each value of the row.
    bias: Vec<i64>,
    /// The requantization of each value of the row.
    requant: Expanded,
}

/// Pixels each depthwise tap's weights are repeated for, so that a stride-1 run is summed
/// `PIXELS·C` values at a time.
const PIXELS: usize = 8;

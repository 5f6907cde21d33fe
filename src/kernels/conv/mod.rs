//! Quantized 2-D convolution on NHWC `u8` images.
//!
//! Three paths, all computing `acc[c] = bias'[c] + Σ_taps Σ_ci x·w` (wrapping `i32`, padding
//! reads `z_x`, `bias' = bias_i32 − z_x·Σ w`) followed by [`crate::kernels::requantize`] and
//! the [`Requant`]'s fused lookup table, if any (`table[q]`):
//! * 1×1 without padding (any stride) with `C_in/groups % 4 == 0`: the GEMM reads the input
//!   pixels in place — no im2col;
//! * depthwise (`groups == C_in`, `C_out = multiplier·C_in`): a direct per-pixel loop over taps
//!   and channels ([`depthwise`]);
//! * everything else: im2col one block of output pixels at a time into the GEMM's panel buffer
//!   ([`im2col`]), never the whole matrix.

mod depthwise;
mod im2col;

use serde::{Deserialize, Serialize};

use super::gemm::{self, driver::Gemm};
use super::pack::PackedB;
use super::params::{PreparedRequant, Requant, expect_len};
use super::simd::Tier;
use super::{Isa, active_isa};
use crate::{Error, Result};
use depthwise::PackedDepthwise;
use im2col::ConvRows;

/// The shape of a 2-D convolution (PyTorch's `Conv2d` arguments).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Conv2dGeometry {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Vertical and horizontal stride.
    pub stride: [usize; 2],
    /// Zero-point padding: top, left, bottom, right.
    pub padding: [usize; 4],
    /// Vertical and horizontal dilation.
    pub dilation: [usize; 2],
    /// Groups; must divide both channel counts.
    pub groups: usize,
}

impl Conv2dGeometry {
    /// `Err(InvalidArgument)` for a zero size, stride, dilation or group count, or groups that
    /// do not divide the channels.
    pub fn check(&self) -> Result<()> {
        let sizes = [self.in_channels, self.out_channels, self.groups];
        if sizes.contains(&0)
            || [self.kernel, self.stride, self.dilation]
                .concat()
                .contains(&0)
        {
            return Err(Error::InvalidArgument(format!(
                "conv2d geometry has a zero channel count, kernel size, stride, dilation or \
                 group count: {self:?}"
            )));
        }
        if !self.in_channels.is_multiple_of(self.groups)
            || !self.out_channels.is_multiple_of(self.groups)
        {
            return Err(Error::InvalidArgument(format!(
                "conv2d groups {} do not divide in_channels {} and out_channels {}",
                self.groups, self.in_channels, self.out_channels
            )));
        }
        Ok(())
    }

    /// Output height and width for an `h × w` input, PyTorch's formula
    /// `(h + pad_top + pad_bottom − dilation·(k − 1) − 1) / stride + 1`.
    pub fn output_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        self.check()?;
        let [pt, pl, pb, pr] = self.padding;
        let out = |size: usize, pads: usize, k: usize, s: usize, d: usize| {
            let span = d * (k - 1) + 1;
            (size + pads >= span).then(|| (size + pads - span) / s + 1)
        };
        let [kh, kw] = self.kernel;
        match (
            out(h, pt + pb, kh, self.stride[0], self.dilation[0]),
            out(w, pl + pr, kw, self.stride[1], self.dilation[1]),
        ) {
            (Some(oh), Some(ow)) if h > 0 && w > 0 => Ok((oh, ow)),
            _ => Err(Error::Shape {
                context: "conv2d input".into(),
                expected: format!(
                    "an image at least as large as the dilated kernel {:?}",
                    self.kernel
                ),
                got: format!("{h}x{w} with padding {:?}", self.padding),
            }),
        }
    }

    fn in_per_group(&self) -> usize {
        self.in_channels / self.groups
    }

    fn out_per_group(&self) -> usize {
        self.out_channels / self.groups
    }

    fn taps(&self) -> usize {
        self.kernel[0] * self.kernel[1]
    }

    fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.in_channels
    }
}

/// A convolution's weights packed once for every kernel path (and for saving).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "PackedConv2dParts")]
pub struct PackedConv2d {
    geometry: Conv2dGeometry,
    input_zero_point: u8,
    weights: Weights,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Weights {
    Gemm(PackedB),
    Depthwise(PackedDepthwise),
}

/// The serialized fields of [`PackedConv2d`], checked against each other before use.
#[derive(Deserialize)]
struct PackedConv2dParts {
    geometry: Conv2dGeometry,
    input_zero_point: u8,
    weights: Weights,
}

impl TryFrom<PackedConv2dParts> for PackedConv2d {
    type Error = Error;

    fn try_from(p: PackedConv2dParts) -> Result<Self> {
        let g = p.geometry;
        g.check()?;
        let consistent = match &p.weights {
            Weights::Gemm(b) => {
                !g.is_depthwise()
                    && (b.groups(), b.k(), b.n())
                        == (g.groups, g.in_per_group() * g.taps(), g.out_per_group())
            }
            Weights::Depthwise(d) => g.is_depthwise() && d.fits(g.out_channels, g.taps()),
        };
        if !consistent {
            return Err(Error::InvalidArgument(format!(
                "packed conv2d weights do not match the geometry {g:?}"
            )));
        }
        Ok(PackedConv2d {
            geometry: g,
            input_zero_point: p.input_zero_point,
            weights: p.weights,
        })
    }
}

impl PackedConv2d {
    /// Packs PyTorch-ordered weights `[C_out, C_in/groups, kh, kw]` with `i32` biases (scale
    /// `s_x·s_w[c]`), folding the input zero point into the biases.
    pub fn new(
        geometry: Conv2dGeometry,
        weights_oihw: &[i8],
        bias: &[i32],
        input_zero_point: u8,
    ) -> Result<Self> {
        geometry.check()?;
        let g = geometry;
        let (cin_g, cout_g, [kh, kw]) = (g.in_per_group(), g.out_per_group(), g.kernel);
        expect_len(
            "conv2d weights",
            weights_oihw.len(),
            g.out_channels * cin_g * kh * kw,
        )?;
        expect_len("conv2d bias", bias.len(), g.out_channels)?;
        let weights = if g.is_depthwise() {
            Weights::Depthwise(PackedDepthwise::new(
                &g,
                weights_oihw,
                bias,
                input_zero_point,
            ))
        } else {
            Weights::Gemm(PackedB::new(
                g.groups,
                cin_g * kh * kw,
                cout_g,
                input_zero_point,
                bias,
                |grp, c, k| {
                    let (oc, tap, ci) = (grp * cout_g + c, k / cin_g, k % cin_g);
                    weights_oihw[((oc * cin_g + ci) * kh + tap / kw) * kw + tap % kw]
                },
            ))
        };
        Ok(PackedConv2d {
            geometry,
            input_zero_point,
            weights,
        })
    }

    /// Makes a depthwise convolution reproduce fbgemm's overflow: in the convolutions fbgemm
    /// runs with its depthwise kernels (`takeDepthWiseFastPath`: `groups == C_in`,
    /// `C_out ∈ {C_in, 2·C_in}`, `C_in % 8 == 0`, square 3×3 or 5×5 kernel, stride 1 or 2,
    /// dilation 1, padding `k/2`), the sum of each pair of consecutive taps saturates to `i16`
    /// before accumulation, as `vpmaddubsw` does there. Exact arithmetic is the default and
    /// agrees with fbgemm whenever activations keep to 7 bits (PyTorch's x86 presets use
    /// `reduce_range`); other convolutions are returned unchanged.
    pub fn emulate_fbgemm_depthwise(mut self) -> Self {
        let g = self.geometry;
        let [k, _] = g.kernel;
        let fast_path = g.in_channels.is_multiple_of(8)
            && (g.out_channels == g.in_channels || g.out_channels == 2 * g.in_channels)
            && g.kernel[0] == g.kernel[1]
            && (k == 3 || k == 5)
            && g.stride.iter().all(|&s| s == 1 || s == 2)
            && g.dilation == [1, 1]
            && g.padding == [k / 2; 4];
        if let (true, Weights::Depthwise(d)) = (fast_path, &mut self.weights) {
            d.saturate_pairs();
        }
        self
    }

    /// The convolution's shape.
    pub fn geometry(&self) -> &Conv2dGeometry {
        &self.geometry
    }

    /// The input zero point folded into the packed biases.
    pub fn input_zero_point(&self) -> u8 {
        self.input_zero_point
    }

    /// Output height and width for an `h × w` input.
    pub fn output_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        self.geometry.output_size(h, w)
    }

    /// `requant` checked against this convolution's output channels and laid out for its
    /// packed weights, for [`qconv2d_prepared`]: done once per layer, not per run.
    pub fn prepare(&self, requant: &Requant) -> Result<PreparedRequant> {
        let c = self.geometry.out_channels;
        match &self.weights {
            Weights::Gemm(b) => PreparedRequant::new(requant, c, b.columns()),
            Weights::Depthwise(_) => PreparedRequant::new(requant, c, (0..c).map(Some)),
        }
    }

    /// How many requantization columns the kernels read (packed columns, padding included).
    fn columns(&self) -> usize {
        match &self.weights {
            Weights::Gemm(b) => b.column_count(),
            Weights::Depthwise(_) => self.geometry.out_channels,
        }
    }
}

/// Quantized conv2d: `input_nhwc` `[batch, h, w, C_in]` (zero point as packed) →
/// `output_nhwc` `[batch, oh, ow, C_out]`, requantized per output channel by `requant`.
///
/// Every ISA path and thread count writes the same bytes (see the module docs for the
/// arithmetic). Errors on wrong buffer lengths, bad multipliers or an input smaller than the
/// dilated kernel; never panics on them. A layer run many times prepares its requantization
/// once ([`PackedConv2d::prepare`]) and calls [`qconv2d_prepared`].
pub fn qconv2d(
    input_nhwc: &[u8],
    batch: usize,
    h: usize,
    w: usize,
    conv: &PackedConv2d,
    requant: &Requant,
    output_nhwc: &mut [u8],
) -> Result<()> {
    let requant = conv.prepare(requant)?;
    qconv2d_prepared(input_nhwc, batch, h, w, conv, &requant, output_nhwc)
}

/// [`qconv2d`] with the requantization prepared for `conv` by [`PackedConv2d::prepare`]
/// (an error if it was prepared for another layer).
pub fn qconv2d_prepared(
    input_nhwc: &[u8],
    batch: usize,
    h: usize,
    w: usize,
    conv: &PackedConv2d,
    requant: &PreparedRequant,
    output_nhwc: &mut [u8],
) -> Result<()> {
    let g = &conv.geometry;
    let (oh, ow) = g.output_size(h, w)?;
    expect_len(
        "conv2d input",
        input_nhwc.len(),
        batch * h * w * g.in_channels,
    )?;
    expect_len(
        "conv2d output",
        output_nhwc.len(),
        batch * oh * ow * g.out_channels,
    )?;
    let epilogue = requant.epilogue("conv2d requantization", g.out_channels, conv.columns())?;
    let isa: Isa = active_isa();
    let rows = ConvRows::new(input_nhwc, g, [h, w], [oh, ow], conv.input_zero_point);
    match &conv.weights {
        Weights::Gemm(b) => {
            let gemm = Gemm {
                rows: &rows,
                m: batch * oh * ow,
                b,
                epilogue,
                dequant: None,
            };
            gemm.run(
                gemm::kernel_for(isa, &rows),
                output_nhwc,
                g.out_channels,
                true,
            );
        }
        Weights::Depthwise(d) => d.run(Tier::of(isa), &rows, epilogue, output_nhwc),
    }
    Ok(())
}

//! The rows of a convolution's im2col matrix, produced one at a time on demand.
//!
//! Row `r` is output pixel `(n, oy, ox)` (`r = (n·oh + oy)·ow + ox`); for group `g` it holds, tap
//! by tap (`ky` major, then `kx`), the `C_in/groups` channels of input pixel
//! `(oy·sh − pad_top + ky·dh, ox·sw − pad_left + kx·dw)` — or `z_x` where that pixel is padding.
//! This matches the packed weights' `k = (ky·kw + kx)·C_in/groups + ci`.

use super::Conv2dGeometry;
use crate::kernels::gemm::driver::RowSource;
use crate::kernels::pack::KR;

/// A convolution's input seen as im2col rows.
pub(super) struct ConvRows<'a> {
    input: &'a [u8],
    geometry: &'a Conv2dGeometry,
    in_hw: [usize; 2],
    out_hw: [usize; 2],
    zero_point: u8,
}

impl<'a> ConvRows<'a> {
    /// The rows of `input` (`[batch, h, w, C_in]`, already length-checked) for output size
    /// `out_hw`.
    pub(super) fn new(
        input: &'a [u8],
        geometry: &'a Conv2dGeometry,
        in_hw: [usize; 2],
        out_hw: [usize; 2],
        zero_point: u8,
    ) -> Self {
        ConvRows { input, geometry, in_hw, out_hw, zero_point }
    }

    /// The input zero point (what padding reads).
    pub(super) fn zero_point(&self) -> u8 {
        self.zero_point
    }

    /// The geometry.
    pub(super) fn geometry(&self) -> &Conv2dGeometry {
        self.geometry
    }

    /// Offset in the input of pixel `(n, iy, ix)` of output row `r`'s image, or `None` where
    /// `(iy, ix)` (relative to the unpadded image, may be negative) is padding.
    fn offset(&self, r: usize, iy: isize, ix: isize) -> Option<usize> {
        let [h, w] = self.in_hw;
        let n = r / (self.out_hw[0] * self.out_hw[1]);
        let (iy, ix) = (usize::try_from(iy).ok()?, usize::try_from(ix).ok()?);
        (iy < h && ix < w).then(|| ((n * h + iy) * w + ix) * self.geometry.in_channels)
    }

    /// The `C_in` channels of input pixel `(iy, ix)` of output row `r`'s image (`None`: padding).
    pub(super) fn pixel(&self, r: usize, iy: isize, ix: isize) -> Option<&'a [u8]> {
        let c = self.geometry.in_channels;
        self.offset(r, iy, ix).map(|offset| &self.input[offset..][..c])
    }

    /// Top-left input coordinate (before adding `ky·dh`, `kx·dw`) of output row `r`.
    pub(super) fn origin(&self, r: usize) -> (isize, isize) {
        let g = self.geometry;
        let (oy, ox) = ((r / self.out_hw[1]) % self.out_hw[0], r % self.out_hw[1]);
        (
            (oy * g.stride[0]) as isize - g.padding[0] as isize,
            (ox * g.stride[1]) as isize - g.padding[1] as isize,
        )
    }
}

impl RowSource for ConvRows<'_> {
    fn k(&self) -> usize {
        self.geometry.in_per_group() * self.geometry.taps()
    }

    fn direct(&self) -> bool {
        let g = self.geometry;
        g.kernel == [1, 1] && g.padding == [0; 4] && g.in_per_group() % KR == 0
    }

    fn row(&self, group: usize, r: usize) -> &[u8] {
        let (iy, ix) = self.origin(r);
        let cin_g = self.geometry.in_per_group();
        let pixel = self.pixel(r, iy, ix).expect("a 1x1 unpadded conv reads inside the image");
        &pixel[group * cin_g..][..cin_g]
    }

    fn copy_row(&self, group: usize, r: usize, dst: &mut [u8]) {
        let g = self.geometry;
        let ([kh, kw], [dh, dw], cin_g) = (g.kernel, g.dilation, g.in_per_group());
        let (y0, x0) = self.origin(r);
        // With one group and no horizontal dilation, a kernel row is one run of input bytes.
        let whole_rows = g.groups == 1 && dw == 1;
        for ky in 0..kh {
            let iy = y0 + (ky * dh) as isize;
            let dst = &mut dst[ky * kw * cin_g..][..kw * cin_g];
            if whole_rows && x0 >= 0 && x0 as usize + kw <= self.in_hw[1] {
                if let Some(offset) = self.offset(r, iy, x0) {
                    dst.copy_from_slice(&self.input[offset..][..kw * cin_g]);
                    continue;
                }
            }
            for (kx, dst) in dst.chunks_exact_mut(cin_g).enumerate() {
                match self.pixel(r, iy, x0 + (kx * dw) as isize) {
                    Some(pixel) => dst.copy_from_slice(&pixel[group * cin_g..][..cin_g]),
                    None => dst.fill(self.zero_point),
                }
            }
        }
    }
}

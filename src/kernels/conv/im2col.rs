//! The rows of a convolution's im2col matrix, produced one at a time on demand.
//!
//! Row `r` is output pixel `(n, oy, ox)` (`r = (n·oh + oy)·ow + ox`); for group `g` it holds, tap
//! by tap (`ky` major, then `kx`), the `C_in/groups` channels of input pixel
//! `(oy·sh − pad_top + ky·dh, ox·sw − pad_left + kx·dw)` — or `z_x` where that pixel is padding.
//! This matches the packed weights' `k = (ky·kw + kx)·C_in/groups + ci`.

use super::Conv2dGeometry;
use crate::kernels::gemm::driver::RowSource;
use crate::kernels::pack::KR;

/// Bytes copied at once for a short kernel row (see `ConvRows::copy_pixel`).
const WIDE: usize = 32;

/// The fewest channels per group for which a kernel that takes row pointers reads the input in
/// place, tap by tap (an implicit GEMM), instead of an im2col copy: shorter runs cost more in
/// pointer loads than the copy saves.
const MIN_TAP_LEN: usize = 16;

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
        ConvRows {
            input,
            geometry,
            in_hw,
            out_hw,
            zero_point,
        }
    }

    /// The input zero point (what padding reads).
    pub(super) fn zero_point(&self) -> u8 {
        self.zero_point
    }

    /// The geometry.
    pub(super) fn geometry(&self) -> &Conv2dGeometry {
        self.geometry
    }

    /// Input and output height and width.
    pub(super) fn sizes(&self) -> ([usize; 2], [usize; 2]) {
        (self.in_hw, self.out_hw)
    }

    /// Row `iy` of image `n`: its `w·C_in` bytes (`None` where it is padding).
    pub(super) fn input_row(&self, n: usize, iy: isize) -> Option<&'a [u8]> {
        let ([h, w], c) = (self.in_hw, self.geometry.in_channels);
        let iy = usize::try_from(iy).ok().filter(|&iy| iy < h)?;
        Some(&self.input[(n * h + iy) * w * c..][..w * c])
    }

    /// Output pixel `[n, oy, ox]` of im2col row `r`.
    fn output_pixel(&self, r: usize) -> [usize; 3] {
        let [oh, ow] = self.out_hw;
        [r / (oh * ow), r / ow % oh, r % ow]
    }

    /// Output pixels `first..`, as `[n, oy, ox]` in row order.
    pub(super) fn pixels_from(&self, first: usize) -> impl Iterator<Item = [usize; 3]> + use<> {
        let [oh, ow] = self.out_hw;
        std::iter::successors(Some(self.output_pixel(first)), move |&[n, oy, ox]| {
            Some(match (ox + 1 == ow, oy + 1 == oh) {
                (false, _) => [n, oy, ox + 1],
                (true, false) => [n, oy + 1, 0],
                (true, true) => [n + 1, 0, 0],
            })
        })
    }

    /// Input coordinate of tap `(0, 0)` of output pixel `[_, oy, ox]` (may be negative).
    pub(super) fn origin(&self, [_, oy, ox]: [usize; 3]) -> (isize, isize) {
        let g = self.geometry;
        (
            (oy * g.stride[0]) as isize - g.padding[0] as isize,
            (ox * g.stride[1]) as isize - g.padding[1] as isize,
        )
    }

    /// The `C_in` channels of input pixel `(iy, ix)` of image `n` (`None` where it is padding).
    pub(super) fn pixel(&self, n: usize, iy: isize, ix: isize) -> Option<&'a [u8]> {
        let ([h, w], c) = (self.in_hw, self.geometry.in_channels);
        let (iy, ix) = (usize::try_from(iy).ok()?, usize::try_from(ix).ok()?);
        (iy < h && ix < w).then(|| &self.input[((n * h + iy) * w + ix) * c..][..c])
    }
}

impl RowSource for ConvRows<'_> {
    fn k(&self) -> usize {
        self.geometry.in_per_group() * self.geometry.taps()
    }

    fn tap_len(&self) -> Option<usize> {
        let cin_g = self.geometry.in_per_group();
        (cin_g.is_multiple_of(KR) && cin_g >= MIN_TAP_LEN).then_some(cin_g)
    }

    fn tap_rows(
        &self,
        group: usize,
        first: usize,
        count: usize,
        pad: &[u8],
        dst: &mut [*const u8],
    ) {
        let g = self.geometry;
        let ([h, w], c, ow) = (self.in_hw, g.in_channels, self.out_hw[1]);
        let ([kh, kw], [dh, dw]) = (g.kernel, g.dilation);
        // Pointers are only computed here (`wrapping_add`, no bounds check per row); the ones
        // that are not padding lie inside `input`, as the `RowSource` contract requires.
        let base = self.input.as_ptr().wrapping_add(group * g.in_per_group());
        let mut i = 0;
        // One stretch of pixels on one output row at a time: per tap, one test of the input
        // row and a step of `stride·C_in` bytes from pixel to pixel.
        while i < count {
            let pixel = self.output_pixel(first + i);
            let len = (ow - pixel[2]).min(count - i);
            let ((y0, x0), n) = (self.origin(pixel), pixel[0]);
            for ky in 0..kh {
                let iy = y0 + (ky * dh) as isize;
                let row = (0..h as isize)
                    .contains(&iy)
                    .then(|| base.wrapping_add((n * h + iy as usize) * w * c));
                for kx in 0..kw {
                    let mut ix = x0 + (kx * dw) as isize;
                    for d in &mut dst[(ky * kw + kx) * count + i..][..len] {
                        *d = match row {
                            Some(row) if (0..w as isize).contains(&ix) => {
                                row.wrapping_add(ix as usize * c)
                            }
                            _ => pad.as_ptr(),
                        };
                        ix += g.stride[1] as isize;
                    }
                }
            }
            i += len;
        }
    }

    fn padding(&self) -> u8 {
        self.zero_point
    }

    fn source(&self) -> &[u8] {
        self.input
    }

    fn copy_rows(&self, group: usize, first: usize, dst: &mut [u8], lda: usize) {
        let k = self.k();
        for (dst, pixel) in dst.chunks_exact_mut(lda).zip(self.pixels_from(first)) {
            self.copy_pixel(group, pixel, &mut dst[..k]);
        }
    }
}

impl ConvRows<'_> {
    /// Writes the im2col row of output pixel `(n, oy, ox)` for `group` to `dst` (`K` bytes).
    fn copy_pixel(&self, group: usize, pixel: [usize; 3], dst: &mut [u8]) {
        let g = self.geometry;
        let ([h, w], c, cin_g) = (self.in_hw, g.in_channels, g.in_per_group());
        let ([kh, kw], [dh, dw]) = (g.kernel, g.dilation);
        let ((y0, x0), n) = (self.origin(pixel), pixel[0]);
        let image = &self.input[n * h * w * c..][..h * w * c];
        // With one group and no horizontal dilation, a kernel row inside the image is one run.
        let whole_row = g.groups == 1 && dw == 1 && x0 >= 0 && x0 as usize + kw <= w;
        let run = kw * cin_g;
        for ky in 0..kh {
            let iy = y0 + (ky * dh) as isize;
            if iy < 0 || iy as usize >= h {
                dst[ky * run..][..run].fill(self.zero_point);
                continue;
            }
            let start = iy as usize * w * c;
            if whole_row {
                let src = start + x0 as usize * c;
                // A short run is copied as one WIDE-byte block when the block stays in the
                // image and in the runs still to be written (they overwrite its tail).
                if run < WIDE && ky * run + WIDE <= kh * run && src + WIDE <= image.len() {
                    dst[ky * run..][..WIDE].copy_from_slice(&image[src..][..WIDE]);
                } else {
                    copy_small(&mut dst[ky * run..][..run], &image[src..][..run]);
                }
                continue;
            }
            let (row, dst) = (&image[start..][..w * c], &mut dst[ky * run..][..run]);
            for kx in 0..kw {
                let (ix, dst) = (x0 + (kx * dw) as isize, &mut dst[kx * cin_g..][..cin_g]);
                if ix < 0 || ix as usize >= w {
                    dst.fill(self.zero_point);
                } else {
                    copy_small(dst, &row[ix as usize * c + group * cin_g..][..cin_g]);
                }
            }
        }
    }
}

/// `dst.copy_from_slice(src)` for the short runs of im2col, as fixed-size (possibly
/// overlapping) copies instead of a `memcpy` call per run.
#[inline(always)]
fn copy_small(dst: &mut [u8], src: &[u8]) {
    let n = dst.len();
    debug_assert_eq!(n, src.len());
    macro_rules! overlapping {
        ($size:literal) => {{
            for start in (0..n - $size).step_by($size).chain([n - $size]) {
                dst[start..start + $size].copy_from_slice(&src[start..start + $size]);
            }
        }};
    }
    // Up to twice the size: one copy at each end (they overlap), no loop.
    macro_rules! ends {
        ($size:literal) => {{
            dst[..$size].copy_from_slice(&src[..$size]);
            dst[n - $size..].copy_from_slice(&src[n - $size..]);
        }};
    }
    match n {
        65.. => overlapping!(32),
        32.. => ends!(32),
        16.. => ends!(16),
        8.. => ends!(8),
        4.. => ends!(4),
        _ => dst.copy_from_slice(src),
    }
}

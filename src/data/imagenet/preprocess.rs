//! ImageNet evaluation preprocessing, as torchvision's `Resize(256)`, `CenterCrop(224)`,
//! `ToTensor()`, `Normalize(mean, std)` on a PIL image.
//!
//! What is matched, and how closely:
//!
//! - **Resize** reproduces Pillow's `Image.resize(size, BILINEAR)` (what torchvision calls on PIL
//!   images) integer for integer: the same triangle filter widened by the scale factor when
//!   shrinking (antialiasing), the same 22-bit fixed-point weights, a horizontal then a vertical
//!   pass with `u8` rounding in between, a pass skipped when its size does not change. The
//!   output size is torchvision's (`int(256 * long / short)` for the long side).
//! - **CenterCrop** uses torchvision's offsets (`round((h - 224) / 2)`, half to even).
//! - **ToTensor / Normalize** are done in `f32` in torchvision's order (`p / 255`, `- mean`,
//!   `/ std`, with the constants rounded from `f64` as `torch.as_tensor` does).
//! - **Decoding** is the `image` crate's (zune-jpeg), not libjpeg-turbo as in Pillow: the only
//!   remaining difference. JPEG decoders may differ by a level or two on some pixels (IDCT and
//!   chroma upsampling rounding). On the 20 foolbox photos against torchvision's tensors in the
//!   goldens this pipeline is within a few `u8` levels, most pixels exact (the EfficientNet
//!   example prints the figure). CMYK and grayscale JPEGs are converted to RGB by the `image`
//!   crate; EXIF orientation is ignored, as torchvision's PIL loader does.

use std::path::Path;

use image::{ImageFormat, ImageReader, RgbImage};

use crate::{Error, Result};

/// How pixels become model input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Normalization {
    /// torchvision's: `(p / 255 - mean) / std` with ImageNet's mean `[0.485, 0.456, 0.406]` and
    /// std `[0.229, 0.224, 0.225]` (ResNets and most torchvision models).
    Torchvision,
    /// TensorFlow EfficientNet-Lite's: `(p - 127) / 128`.
    EfficientNetLite,
}

impl Normalization {
    /// The model input value of pixel level `p` in channel `c` (0 red, 1 green, 2 blue).
    pub fn apply(self, p: u8, c: usize) -> f32 {
        const MEAN: [f64; 3] = [0.485, 0.456, 0.406];
        const STD: [f64; 3] = [0.229, 0.224, 0.225];
        match self {
            Normalization::Torchvision => (f32::from(p) / 255.0 - MEAN[c] as f32) / STD[c] as f32,
            Normalization::EfficientNetLite => (f32::from(p) - 127.0) / 128.0,
        }
    }
}

/// Resize the shorter side, centre crop, normalise: images to `[3, crop, crop]` model input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preprocess {
    /// Length the shorter side is resized to (256 for ImageNet evaluation).
    pub resize: usize,
    /// Side of the square centre crop (224).
    pub crop: usize,
    /// How pixels are normalised.
    pub normalization: Normalization,
}

impl Preprocess {
    /// ImageNet evaluation: resize 256, centre crop 224, then `normalization`.
    pub fn imagenet(normalization: Normalization) -> Self {
        Preprocess {
            resize: 256,
            crop: 224,
            normalization,
        }
    }

    /// Decodes the image file at `path` and preprocesses it.
    pub fn load(&self, path: &Path) -> Result<Vec<f32>> {
        self.apply(&decode(path)?)
    }

    /// Preprocesses a decoded image into `[3, crop, crop]` values, channel-major.
    pub fn apply(&self, image: &RgbImage) -> Result<Vec<f32>> {
        if self.crop == 0 || self.crop > self.resize {
            return Err(Error::InvalidArgument(format!(
                "centre crop {} must be in 1..={} (the resized shorter side)",
                self.crop, self.resize
            )));
        }
        let resized = resize_shorter_side(image, self.resize)?;
        let (w, h) = resized.dimensions();
        let top = round_half_even(f64::from(h - self.crop as u32) / 2.0);
        let left = round_half_even(f64::from(w - self.crop as u32) / 2.0);
        self.crop_normalized(&resized, top, left, false)
    }

    /// The `[3, crop, crop]` values of the `crop`x`crop` window of `image` at (`top`, `left`),
    /// mirrored left to right when `flip` (for test-time views). A window that does not lie
    /// inside the image is an error.
    pub fn crop_normalized(
        &self,
        image: &RgbImage,
        top: u32,
        left: u32,
        flip: bool,
    ) -> Result<Vec<f32>> {
        let n = self.crop;
        let (w, h) = image.dimensions();
        if top as usize + n > h as usize || left as usize + n > w as usize {
            return Err(Error::InvalidArgument(format!(
                "a {n}x{n} window at ({top}, {left}) is not inside a {w}x{h} image"
            )));
        }
        let mut out = vec![0.0; 3 * n * n];
        for y in 0..n {
            for x in 0..n {
                let sx = if flip { n - 1 - x } else { x };
                let p = image.get_pixel(left + sx as u32, top + y as u32).0;
                for c in 0..3 {
                    out[(c * n + y) * n + x] = self.normalization.apply(p[c], c);
                }
            }
        }
        Ok(out)
    }
}

/// Decodes an image file (JPEG or PNG, recognised by content) to RGB.
///
/// A JPEG cut short (no end-of-image marker) is an error, as in Pillow, although the decoder
/// would fill the missing part with grey.
pub fn decode(path: &Path) -> Result<RgbImage> {
    let bad = |reason: String| Error::BadFile {
        path: path.to_path_buf(),
        reason,
    };
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = std::fs::read(path).map_err(io)?;
    let reader = ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(io)?;
    if reader.format() == Some(ImageFormat::Jpeg) && !jpeg_is_complete(&bytes) {
        return Err(bad("truncated JPEG: no end-of-image marker".into()));
    }
    let image = reader.decode().map_err(|e| bad(e.to_string()))?;
    if image.width() == 0 || image.height() == 0 {
        return Err(bad("empty image".into()));
    }
    Ok(image.to_rgb8())
}

/// Whether JPEG data has its end-of-image marker (`FF D9`) after its last start-of-scan marker
/// (`FF DA`). In entropy-coded data an `FF` byte is always followed by `00` or a restart marker,
/// so after the last scan starts, `FF D9` can only be the real end.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    last_scan.is_some_and(|start| bytes[start..].windows(2).any(|w| w == [0xFF, 0xD9]))
}

/// torchvision's `Resize(size)`: the shorter side becomes `size`, the longer
/// `int(size * long / short)`, with Pillow's bilinear filter.
pub fn resize_shorter_side(image: &RgbImage, size: usize) -> Result<RgbImage> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let (short, long) = (w.min(h), w.max(h));
    if short == 0 || size == 0 {
        return Err(Error::InvalidArgument(format!(
            "cannot resize a {w}x{h} image to shorter side {size}"
        )));
    }
    let new_long = ((size * long) as f64 / short as f64) as usize;
    let (nw, nh) = if w <= h {
        (size, new_long)
    } else {
        (new_long, size)
    };
    Ok(resize_bilinear(image, nw as u32, nh as u32))
}

/// Pillow's `Image.resize((width, height), Image.BILINEAR)` for an RGB image, bit for bit.
pub fn resize_bilinear(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let mut image = image.clone();
    if width != image.width() {
        let taps = Taps::new(image.width() as usize, width as usize);
        let mut out = RgbImage::new(width, image.height());
        for (src, dst) in image.rows().zip(out.rows_mut()) {
            let src: Vec<[u8; 3]> = src.map(|p| p.0).collect();
            for (x, p) in dst.enumerate() {
                let (start, weights) = taps.of(x);
                p.0 = std::array::from_fn(|c| {
                    clip8(
                        weights
                            .iter()
                            .enumerate()
                            .fold(ROUND, |acc, (i, &k)| acc + i32::from(src[start + i][c]) * k),
                    )
                });
            }
        }
        image = out;
    }
    if height != image.height() {
        let taps = Taps::new(image.height() as usize, height as usize);
        let row = image.width() as usize * 3;
        let src: &[u8] = &image;
        let mut out = RgbImage::new(image.width(), height);
        for (y, dst) in out.chunks_exact_mut(row).enumerate() {
            let (start, weights) = taps.of(y);
            for (i, v) in dst.iter_mut().enumerate() {
                *v = clip8(weights.iter().enumerate().fold(ROUND, |acc, (j, &k)| {
                    acc + i32::from(src[(start + j) * row + i]) * k
                }));
            }
        }
        image = out;
    }
    image
}

/// Pillow's fixed-point precision for 8-bit images (`32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;
/// Half of the last fixed-point unit: the rounding offset every sum starts from.
const ROUND: i32 = 1 << (PRECISION_BITS - 1);

fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the bilinear filter: for each
/// output position, the first input position it reads and its fixed-point weights.
struct Taps {
    starts: Vec<usize>,
    lens: Vec<usize>,
    weights: Vec<i32>,
    ksize: usize,
}

impl Taps {
    fn new(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filterscale; // the bilinear filter's support is 1
        let ksize = support.ceil() as usize * 2 + 1;
        let mut taps = Taps {
            starts: Vec::with_capacity(out_size),
            lens: Vec::with_capacity(out_size),
            weights: vec![0; out_size * ksize],
            ksize,
        };
        for xx in 0..out_size {
            let center = (xx as f64 + 0.5) * scale;
            // C's `(int)` truncation, then clamping to the input.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
            let k: Vec<f64> = (0..xmax)
                .map(|x| {
                    let t = ((x + xmin) as f64 - center + 0.5) / filterscale;
                    (1.0 - t.abs()).max(0.0)
                })
                .collect();
            let sum: f64 = k.iter().sum();
            for (x, w) in k.iter().enumerate() {
                let w = if sum != 0.0 { w / sum } else { *w };
                taps.weights[xx * ksize + x] = (0.5 + w * f64::from(1u32 << PRECISION_BITS)) as i32;
            }
            taps.starts.push(xmin as usize);
            taps.lens.push(xmax.max(0) as usize);
        }
        taps
    }

    fn of(&self, out: usize) -> (usize, &[i32]) {
        let weights = &self.weights[out * self.ksize..][..self.lens[out]];
        (self.starts[out], weights)
    }
}

/// Python's `round` (half to even) of a non-negative value.
fn round_half_even(v: f64) -> u32 {
    v.round_ties_even() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pillow_bilinear_weights_and_sizes() {
        // Halving: each output reads 4 inputs with weights 1/8, 3/8, 3/8, 1/8 (inner ones).
        let taps = Taps::new(8, 4);
        let (start, w) = taps.of(1);
        assert_eq!(start, 1);
        let unit = 1 << PRECISION_BITS;
        assert_eq!(w, &[unit / 8, 3 * unit / 8, 3 * unit / 8, unit / 8]);
        // A constant image stays constant; sizes follow torchvision.
        let image = RgbImage::from_pixel(300, 200, image::Rgb([7, 100, 250]));
        let resized = resize_shorter_side(&image, 256).unwrap();
        assert_eq!(resized.dimensions(), (384, 256));
        assert!(resized.pixels().all(|p| p.0 == [7, 100, 250]));
        assert_eq!(round_half_even(16.5), 16);
        assert_eq!(round_half_even(17.5), 18);
    }
}

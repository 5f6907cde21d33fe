//! Constant padding of NHWC `u8` images (PyTorch `F.pad(x, …, mode="constant", value=v)` on the
//! two spatial axes).
//!
//! No arithmetic: the output keeps the input's quantization, interior pixels are copied and the
//! border is filled with one byte, the pad constant quantized by the caller (a pad value of 0.0
//! is the zero point).

use rayon::prelude::*;

use super::params::expect_len;
use crate::{Error, Result};

/// Pads `input` `[n, h, w, c]` into `out` `[n, pt + h + pb, pl + w + pr, c]`, with
/// `padding = [pt, pl, pb, pr]` (top, left, bottom, right): `out[i][y][x][ch] =
/// input[i][y − pt][x − pl][ch]` inside, `value` everywhere else. Parallel over output rows.
/// `Err(Shape)` on wrong buffer lengths (or sizes that overflow `usize`), never a panic.
#[allow(clippy::too_many_arguments)]
pub fn qpad_nhwc(
    input: &[u8],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    padding: [usize; 4],
    value: u8,
    out: &mut [u8],
) -> Result<()> {
    let [pt, pl, pb, pr] = padding;
    let too_large = || {
        Error::InvalidArgument(format!(
            "pad of [{n}, {h}, {w}, {c}] by {padding:?} overflows"
        ))
    };
    let oh = h
        .checked_add(pt)
        .and_then(|v| v.checked_add(pb))
        .ok_or_else(too_large)?;
    let ow = w
        .checked_add(pl)
        .and_then(|v| v.checked_add(pr))
        .ok_or_else(too_large)?;
    let volume = |rows: usize, cols: usize| {
        [n, rows, cols, c]
            .into_iter()
            .try_fold(1usize, usize::checked_mul)
            .ok_or_else(too_large)
    };
    expect_len("pad input", input.len(), volume(h, w)?)?;
    expect_len("pad output", out.len(), volume(oh, ow)?)?;
    let (row_in, left, right) = (w * c, pl * c, pr * c);
    out.par_chunks_mut((ow * c).max(1))
        .enumerate()
        .for_each(|(row, out)| {
            let (image, y) = (row / oh, row % oh);
            if y < pt || y >= pt + h {
                out.fill(value);
                return;
            }
            let src = &input[(image * h + y - pt) * row_in..][..row_in];
            out[..left].fill(value);
            out[left..left + row_in].copy_from_slice(src);
            out[left + row_in..][..right].fill(value);
        });
    Ok(())
}

//! Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization Through Weight
//! Equalization and Bias Correction", section 4.2, with the input statistics taken from the
//! calibration batches instead of BatchNorm).
//!
//! Rounding a layer's weights `W` to `Q(W)` adds `ε·x` to its output, where `ε = Q(W) − W`;
//! its mean over the data, `ε·E[x]`, shifts every output channel by a constant that the next
//! layers inherit. Calibration records `E[x]` as the layer sees it — for a convolution the
//! mean of every (input channel, kernel tap) column of its im2col matrix over all output
//! positions, so that zero padding at the borders counts exactly — and convert subtracts
//! `ε·E[x]` from the bias. On the calibration data the layer with `Q(W)` and the corrected
//! bias then has the float layer's per-channel mean output.

use crate::graph::{Graph, LayerLayout};
use crate::{Error, Result};

/// The mean input of one conv or linear layer, per column of its im2col matrix.
#[derive(Clone, Debug)]
pub(crate) struct InputMeans {
    layout: LayerLayout,
    /// Sums over all output positions seen, `[in_channels, kernel_h, kernel_w]`.
    sums: Vec<f64>,
    /// Output positions seen.
    positions: u64,
}

impl InputMeans {
    /// Empty statistics for graph node `n`, a conv or linear layer with weight data; `None`
    /// for any other node.
    pub(crate) fn of(graph: &Graph, n: usize) -> Option<InputMeans> {
        let layout = LayerLayout::of(graph, n)?;
        let g = layout.geometry;
        Some(InputMeans {
            layout,
            sums: vec![0.0; g.in_channels * g.kernel[0] * g.kernel[1]],
            positions: 0,
        })
    }

    /// Adds one input batch of shape `shape` (NCHW for a convolution).
    pub(crate) fn observe(&mut self, values: &[f32], shape: &[usize]) -> Result<()> {
        let w = self.layout.geometry;
        if self.layout.linear {
            let features = shape.last().copied().unwrap_or(0);
            if features != w.in_channels || !values.len().is_multiple_of(features.max(1)) {
                return Err(self.mismatch(shape));
            }
            for row in values.chunks_exact(features) {
                for (s, &x) in self.sums.iter_mut().zip(row) {
                    *s += f64::from(x);
                }
            }
            self.positions += (values.len() / features) as u64;
            return Ok(());
        }
        let &[n, c, h, width] = shape else {
            return Err(self.mismatch(shape));
        };
        if c != w.in_channels || values.len() != n * c * h * width {
            return Err(self.mismatch(shape));
        }
        let (oh, ow) = w.output_size(h, width)?;
        let rows = taps(h, oh, w.kernel[0], w.stride[0], w.padding[0], w.dilation[0]);
        let cols = taps(
            width,
            ow,
            w.kernel[1],
            w.stride[1],
            w.padding[1],
            w.dilation[1],
        );
        let [kh, kw] = w.kernel;
        let mut row_sums = vec![0.0f64; kw * h];
        for (plane, image) in values.chunks_exact(h * width).enumerate() {
            // row_sums[j][y]: the row y of the image over the columns tap j reads.
            for (j, cols) in cols.iter().enumerate() {
                for (y, line) in image.chunks_exact(width).enumerate() {
                    row_sums[j * h + y] = cols.iter().map(|&x| f64::from(line[x])).sum();
                }
            }
            let sums = &mut self.sums[(plane % c) * kh * kw..][..kh * kw];
            for (i, rows) in rows.iter().enumerate() {
                for j in 0..kw {
                    sums[i * kw + j] += rows.iter().map(|&y| row_sums[j * h + y]).sum::<f64>();
                }
            }
        }
        self.positions += (n * oh * ow) as u64;
        Ok(())
    }

    /// `ε·E[x]` per output channel for the weight error `ε = Q(W) − W`, laid out
    /// `[out, in/groups, kh, kw]` (a linear layer's as `[out, in]`).
    pub(crate) fn shift(&self, error: &[f32]) -> Result<Vec<f32>> {
        let w = self.layout.geometry;
        let taps = w.kernel[0] * w.kernel[1];
        let per_group = w.in_channels / w.groups;
        let per_out = per_group * taps;
        if self.positions == 0 || error.len() != w.out_channels * per_out {
            return Err(Error::Calibration(
                "bias correction: no input was observed for a layer, or its weights changed shape"
                    .into(),
            ));
        }
        let count = self.positions as f64;
        let out_per_group = w.out_channels / w.groups;
        let shifts = error
            .chunks_exact(per_out)
            .enumerate()
            .map(|(o, errors)| {
                let first = (o / out_per_group) * per_group * taps;
                let means = &self.sums[first..][..per_out];
                let dot: f64 = (errors.iter().zip(means))
                    .map(|(&e, &s)| f64::from(e) * s)
                    .sum();
                (dot / count) as f32
            })
            .collect();
        Ok(shifts)
    }

    fn mismatch(&self, shape: &[usize]) -> Error {
        Error::Calibration(format!(
            "bias correction: a layer with {} input channels got an input of shape {shape:?}",
            self.layout.geometry.in_channels
        ))
    }
}

/// For one axis of a convolution with `outputs` output positions: the input positions (of
/// `size`) each of the `kernel` taps reads, padding left out.
fn taps(
    size: usize,
    outputs: usize,
    kernel: usize,
    stride: usize,
    before: usize,
    dilation: usize,
) -> Vec<Vec<usize>> {
    (0..kernel)
        .map(|k| {
            (0..outputs)
                .filter_map(|o| (o * stride + k * dilation).checked_sub(before))
                .filter(|&x| x < size)
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Conv2dGeometry;

    /// The window of a convolution with the given geometry.
    fn conv(c: usize, groups: usize, k: [usize; 2], s: [usize; 2], p: [usize; 4]) -> InputMeans {
        let geometry = Conv2dGeometry {
            in_channels: c,
            out_channels: 2 * groups,
            groups,
            kernel: k,
            stride: s,
            padding: p,
            dilation: [1, 2],
        };
        InputMeans {
            layout: LayerLayout {
                geometry,
                linear: false,
            },
            sums: vec![0.0; c * k[0] * k[1]],
            positions: 0,
        }
    }

    /// The column means of the im2col matrix, built pixel by pixel.
    fn im2col_means(m: &InputMeans, x: &[f32], [n, c, h, w]: [usize; 4]) -> (Vec<f64>, u64) {
        let win = m.layout.geometry;
        let out = |size: usize, k: usize, s: usize, p: usize, q: usize, d: usize| {
            (size + p + q - d * (k - 1) - 1) / s + 1
        };
        let [kh, kw] = win.kernel;
        let oh = out(
            h,
            kh,
            win.stride[0],
            win.padding[0],
            win.padding[2],
            win.dilation[0],
        );
        let ow = out(
            w,
            kw,
            win.stride[1],
            win.padding[1],
            win.padding[3],
            win.dilation[1],
        );
        let mut sums = vec![0.0f64; c * kh * kw];
        for b in 0..n {
            for (ch, i, j, y, z) in (0..c).flat_map(|ch| {
                (0..kh).flat_map(move |i| {
                    (0..kw).flat_map(move |j| {
                        (0..oh).flat_map(move |y| (0..ow).map(move |z| (ch, i, j, y, z)))
                    })
                })
            }) {
                let iy =
                    (y * win.stride[0] + i * win.dilation[0]) as isize - win.padding[0] as isize;
                let ix =
                    (z * win.stride[1] + j * win.dilation[1]) as isize - win.padding[1] as isize;
                if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                    let v = x[((b * c + ch) * h + iy as usize) * w + ix as usize];
                    sums[(ch * kh + i) * kw + j] += f64::from(v);
                }
            }
        }
        (sums, (n * oh * ow) as u64)
    }

    #[test]
    fn column_sums_match_an_explicit_im2col() {
        for (k, s, p) in [
            ([3, 3], [1, 1], [1, 1, 1, 1]),
            ([3, 2], [2, 1], [0, 2, 1, 0]),
            ([1, 1], [2, 2], [0; 4]),
            ([5, 3], [2, 3], [2, 1, 2, 1]),
        ] {
            let shape = [2, 4, 7, 9];
            let x: Vec<f32> = (0..shape.iter().product::<usize>())
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let mut m = conv(4, 2, k, s, p);
            m.observe(&x, &shape).unwrap();
            m.observe(&x, &shape).unwrap();
            let (sums, positions) = im2col_means(&m, &x, shape);
            assert_eq!(m.positions, 2 * positions, "{k:?} {s:?} {p:?}");
            for (a, b) in m.sums.iter().zip(&sums) {
                assert!(
                    (a - 2.0 * b).abs() < 1e-9,
                    "{k:?} {s:?} {p:?}: {a} vs {}",
                    2.0 * b
                );
            }
        }
    }

    #[test]
    fn shift_pairs_each_output_with_its_group_s_inputs() {
        // 2 groups of 2 input channels, 1x1 kernel, 2 outputs per group.
        let mut m = conv(4, 2, [1, 1], [1, 1], [0; 4]);
        m.layout.geometry.dilation = [1, 1];
        let x = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0];
        m.observe(&x, &[1, 4, 1, 2]).unwrap();
        let error = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, -1.0, 0.0];
        assert_eq!(m.shift(&error).unwrap(), vec![1.0, 2.0, 7.0, -3.0]);
        assert!(m.shift(&error[1..]).is_err());
        assert!(m.observe(&x, &[1, 2, 2, 2]).is_err());
    }

    #[test]
    fn a_window_larger_than_its_padded_input_is_an_error() {
        let mut m = conv(1, 1, [5, 5], [1, 1], [0; 4]);
        assert!(m.observe(&[0.0; 9], &[1, 1, 3, 3]).is_err());
    }
}

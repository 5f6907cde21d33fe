//! Elementwise quantized add, sub and mul of two `u8` tensors with NumPy broadcasting.
//!
//! Both inputs and the output are affine `u8` tensors (`x = s·(q − z)`) with their own
//! [`QParams`]; the exact `f32`/`i32` arithmetic of each op is on [`qbinary`].
//!
//! # Shapes and broadcasting
//!
//! Shapes are the physical row-major shapes of the buffers (a caller with NCHW values permutes
//! them to NHWC first) and all three have the same rank (pad with leading 1s). Each input
//! dimension equals the output's or is 1 (broadcast). Dimensions are first collapsed: size-1
//! output dimensions are dropped and neighbours broadcast the same way in both inputs are merged,
//! so a same-shape op is one contiguous run, the squeeze-excitation gate
//! `[N,H,W,C] · [N,1,1,C]` is rows of `C` with both inputs contiguous, and
//! `[N,H,W,C] + [N,1,1,1]` is rows of `H·W·C` with `b` constant. The output is then processed as
//! rows of the innermost collapsed dimension, the inputs' row offsets stepped by strides (0
//! along broadcast dimensions) from row to row, by loops specialised for inner strides (1,1), (1,0), (0,1) and
//! (0,0), compiled per tier ([`multiversion`]). Rayon splits the output into fixed chunks;
//! every element is computed independently, so every thread count and tier writes the same
//! bytes.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::elementwise::{CHUNK, tier};
use super::params::{QParams, expect_len, requantize_parts, round_clamped};
use super::simd::multiversion;
use crate::{Error, Result};

/// An elementwise quantized binary op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum QBinaryOp {
    /// `a + b`: dequantize in `f32`, add, quantize (exactly as [`qbinary`] spells out).
    Add,
    /// `a − b`: as add, with a subtraction.
    Sub,
    /// `a · b`: `i32` product of the centred values, then
    /// [`requantize`](crate::kernels::requantize) (see [`qbinary`]).
    Mul,
}

/// One input of [`qbinary`]: a `u8` buffer, its physical row-major shape and its quantization.
#[derive(Clone, Copy, Debug)]
pub struct QTensorRef<'a> {
    /// The values, `shape.iter().product()` of them.
    pub data: &'a [u8],
    /// The physical (row-major) shape of `data`.
    pub shape: &'a [usize],
    /// How the values are quantized.
    pub qparams: QParams,
}

impl<'a> QTensorRef<'a> {
    /// A tensor view.
    pub fn new(data: &'a [u8], shape: &'a [usize], qparams: QParams) -> Self {
        QTensorRef {
            data,
            shape,
            qparams,
        }
    }
}

/// Quantized elementwise `op` of `a` and `b` with NumPy broadcasting into `out`
/// (`out_shape`, quantized with `out_qp`), with a fused ReLU if `relu`.
///
/// Per output element, with `q_a`, `q_b` the broadcast input values, exactly:
///
/// * **add** (PyTorch `quantized::add` / `add_relu`, fbgemm's vectorized `qadd_kernel`):
///   `a' = fma(s_a, f32(q_a), s_a·(−f32(z_a)))` (the product `s_a·(−f32(z_a))` rounded to `f32`
///   first, then one fused multiply-add), `b'` likewise, `c = a' + b'` in `f32`,
///   `c = max(c, 0)` for a fused ReLU, then `q = round_to_u8(c·(1/s_y), z_y, −z_y, 255 − z_y)`:
///   `c·(1/s_y)` a plain `f32` product (`1/s_y` rounded to `f32` first), clamped to
///   `[−z_y, 255 − z_y]`, rounded half to even, plus `z_y`.
/// * **sub**: the same with `c = a' − b'`.
/// * **mul** (PyTorch `quantized::mul` / `mul_relu`): `acc = (q_a − z_a)·(q_b − z_b)` in `i32`,
///   `m = ((s_a as f64 · s_b as f64) / s_y as f64) as f32`, then
///   [`requantize`](crate::kernels::requantize)`(acc, m, z_y, qmin, 255)` with `qmin = z_y` for a
///   fused ReLU, else 0.
///
/// `a.shape`, `b.shape` and `out_shape` are physical row-major shapes of the same rank, each
/// input dimension equal to the output's or 1, and every buffer has the length of its shape;
/// anything else (or a scale that is not finite and positive) is an `Err`, never a panic. Same
/// bytes on every ISA path and thread count.
pub fn qbinary(
    op: QBinaryOp,
    a: QTensorRef<'_>,
    b: QTensorRef<'_>,
    out_shape: &[usize],
    out_qp: QParams,
    relu: bool,
    out: &mut [u8],
) -> Result<()> {
    let what = match op {
        QBinaryOp::Add => "add",
        QBinaryOp::Sub => "sub",
        QBinaryOp::Mul => "mul",
    };
    a.qparams.check(&format!("{what} input a"))?;
    b.qparams.check(&format!("{what} input b"))?;
    out_qp.check(&format!("{what} output"))?;
    // Element counts first: they bound every product `Layout` forms.
    let (a_len, b_len, out_len) = (elements(a.shape)?, elements(b.shape)?, elements(out_shape)?);
    let layout = Layout::new(what, a.shape, b.shape, out_shape)?;
    expect_len(&format!("{what} input a"), a.data.len(), a_len)?;
    expect_len(&format!("{what} input b"), b.data.len(), b_len)?;
    expect_len(&format!("{what} output"), out.len(), out_len)?;
    let arith = match op {
        QBinaryOp::Add => Arith::Add(AddParams::new(a.qparams, b.qparams, out_qp, relu)),
        QBinaryOp::Sub => Arith::Sub(AddParams::new(a.qparams, b.qparams, out_qp, relu)),
        QBinaryOp::Mul => Arith::Mul(MulParams::new(a.qparams, b.qparams, out_qp, relu)),
    };
    let tier = tier();
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, out)| binary_chunk(tier, &arith, &layout, a.data, b.data, i * CHUNK, out));
    Ok(())
}

/// Quantized add of two tensors of the same length (PyTorch `quantized::add` / `add_relu`):
/// [`qbinary`] with [`QBinaryOp::Add`] on one-dimensional shapes, so exactly
/// `round_to_u8(relu(fma(s_a, f32(q_a), s_a·(−f32(z_a))) + fma(s_b, f32(q_b), s_b·(−f32(z_b))))
/// · (1/s_y), z_y, −z_y, 255 − z_y)` (see [`qbinary`]). Errors unless `b` and `out` have the
/// length of `a`.
pub fn qadd(
    a: &[u8],
    a_qp: QParams,
    b: &[u8],
    b_qp: QParams,
    out_qp: QParams,
    relu: bool,
    out: &mut [u8],
) -> Result<()> {
    expect_len("add input b", b.len(), a.len())?;
    let shape = [a.len()];
    qbinary(
        QBinaryOp::Add,
        QTensorRef::new(a, &shape, a_qp),
        QTensorRef::new(b, &shape, b_qp),
        &shape,
        out_qp,
        relu,
        out,
    )
}

/// The product of `shape`, or `Err` if it overflows `usize`.
pub(crate) fn elements(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| Error::InvalidArgument(format!("shape {shape:?} has too many elements")))
}

/// A broadcast collapsed to rows: the output is `rows × inner` (row-major), row `r`'s inputs
/// start at the offsets [`Rows`] tracks.
#[derive(Debug)]
pub(crate) struct Layout {
    /// Length of the innermost collapsed dimension (at least 1).
    inner: usize,
    /// Whether `a` / `b` advance along it (stride 1) or repeat one value (stride 0).
    inner_a: bool,
    inner_b: bool,
    /// The outer collapsed dimensions, outermost first: `(size, stride in a, stride in b)`.
    outer: Vec<(usize, usize, usize)>,
}

impl Layout {
    /// Checks the ranks and broadcast rules (`what` names the op in errors) and collapses.
    pub(crate) fn new(what: &str, a: &[usize], b: &[usize], out: &[usize]) -> Result<Self> {
        let fits = |x: &[usize]| {
            x.len() == out.len() && x.iter().zip(out).all(|(&d, &o)| d == o || d == 1)
        };
        for (name, shape) in [("a", a), ("b", b)] {
            if !fits(shape) {
                return Err(Error::Shape {
                    context: format!("{what} input {name}"),
                    expected: format!(
                        "a shape broadcastable to {out:?} (same rank, dims equal or 1)"
                    ),
                    got: format!("{shape:?}"),
                });
            }
        }
        // Collapse: `(size, a advances, b advances)`, merging neighbours with the same pattern.
        let mut dims: Vec<(usize, bool, bool)> = Vec::new();
        for i in (0..out.len()).filter(|&i| out[i] != 1) {
            let pattern = (a[i] == out[i], b[i] == out[i]);
            match dims.last_mut() {
                // Saturating: with a 0 dimension the product can exceed `usize` (nothing is read).
                Some(last) if (last.1, last.2) == pattern => last.0 = last.0.saturating_mul(out[i]),
                _ => dims.push((out[i], pattern.0, pattern.1)),
            }
        }
        let (inner, inner_a, inner_b) = dims.pop().unwrap_or((1, true, true));
        let (mut stride_a, mut stride_b) = (
            if inner_a { inner } else { 1 },
            if inner_b { inner } else { 1 },
        );
        let mut outer = Vec::with_capacity(dims.len());
        for &(size, pa, pb) in dims.iter().rev() {
            outer.push((
                size,
                if pa { stride_a } else { 0 },
                if pb { stride_b } else { 0 },
            ));
            stride_a = stride_a.saturating_mul(if pa { size } else { 1 });
            stride_b = stride_b.saturating_mul(if pb { size } else { 1 });
        }
        outer.reverse();
        Ok(Layout {
            inner,
            inner_a,
            inner_b,
            outer,
        })
    }
}

/// A walk over output rows with the offsets in `a` and `b` of each row's first input value,
/// updated by strides as the outer index advances (an odometer: no division per row).
struct Rows<'l> {
    outer: &'l [(usize, usize, usize)],
    index: Vec<usize>,
    a: usize,
    b: usize,
}

impl<'l> Rows<'l> {
    /// Positioned at output row `row` (`row < rows`, so no outer size is 0).
    fn at(layout: &'l Layout, mut row: usize) -> Self {
        let outer = &layout.outer[..];
        let (mut index, mut a, mut b) = (vec![0; outer.len()], 0, 0);
        for (i, &(size, sa, sb)) in outer.iter().enumerate().rev() {
            index[i] = row % size;
            row /= size;
            a += index[i] * sa;
            b += index[i] * sb;
        }
        Rows { outer, index, a, b }
    }

    /// Moves to the next row (past the last one it wraps to row 0).
    #[inline(always)]
    fn advance(&mut self) {
        for (i, &(size, sa, sb)) in self.outer.iter().enumerate().rev() {
            self.index[i] += 1;
            if self.index[i] < size {
                self.a += sa;
                self.b += sb;
                return;
            }
            self.index[i] = 0;
            self.a -= (size - 1) * sa;
            self.b -= (size - 1) * sb;
        }
    }
}

/// The constants of one quantized add or sub (PyTorch's `qadd_kernel`), for an output of
/// `0..=max` (255 for `u8`, 65535 for the 16-bit add of `kernels::qbinary_wide`).
pub(crate) struct AddParams {
    a_scale: f32,
    a_offset: f32,
    b_scale: f32,
    b_offset: f32,
    inv_out: f32,
    zero_point: i32,
    lo: f32,
    hi: f32,
    relu: bool,
}

impl AddParams {
    /// `offset = s·(−f32(z))` per input, `inv_out = 1/s_y`, clamps `[−z_y, 255 − z_y]`.
    pub(crate) fn new(a: QParams, b: QParams, out: QParams, relu: bool) -> Self {
        let scales = [a.scale, b.scale, out.scale];
        let zero_points = [a.zero_point, b.zero_point, out.zero_point].map(u16::from);
        Self::ranged(scales, zero_points, 255, relu)
    }

    /// The same for inputs and an output of any width: scales and zero points of `a`, `b` and
    /// the output, whose values span `0..=max`.
    pub(crate) fn ranged(scales: [f32; 3], zero_points: [u16; 3], max: u16, relu: bool) -> Self {
        let [za, zb, zy] = zero_points.map(f32::from);
        let zero_point = i32::from(zero_points[2]);
        AddParams {
            a_scale: scales[0],
            a_offset: scales[0] * -za,
            b_scale: scales[1],
            b_offset: scales[1] * -zb,
            inv_out: 1.0 / scales[2],
            zero_point,
            lo: -zy,
            hi: (i32::from(max) - zero_point) as f32,
            relu,
        }
    }

    /// `a' = fma(s_a, f32(q), s_a·(−f32(z_a)))`.
    #[inline(always)]
    pub(crate) fn a(&self, q: f32) -> f32 {
        self.a_scale.mul_add(q, self.a_offset)
    }

    /// `b' = fma(s_b, f32(q), s_b·(−f32(z_b)))`.
    #[inline(always)]
    pub(crate) fn b(&self, q: f32) -> f32 {
        self.b_scale.mul_add(q, self.b_offset)
    }

    /// `c` (ReLU'd if fused) → `clamp(c·(1/s_y), −z_y, max − z_y)` rounded half to even, `+ z_y`.
    #[inline(always)]
    pub(crate) fn quantized(&self, c: f32) -> i32 {
        let c = if self.relu { c.max(0.0) } else { c };
        round_clamped(c * self.inv_out, self.zero_point, self.lo, self.hi)
    }

    /// [`quantized`](Self::quantized) for a `u8` output.
    #[inline(always)]
    fn output(&self, c: f32) -> u8 {
        self.quantized(c) as u8
    }
}

/// The constants of one quantized mul (PyTorch's `quantized::mul`).
struct MulParams {
    a_zero: i32,
    b_zero: i32,
    multiplier: f32,
    zero_point: i32,
    lo: f32,
    hi: f32,
}

impl MulParams {
    /// `m = ((s_a as f64 · s_b as f64) / s_y as f64) as f32`, clamps `[qmin − z_y, 255 − z_y]`.
    fn new(a: QParams, b: QParams, out: QParams, relu: bool) -> Self {
        let zero_point = i32::from(out.zero_point);
        let qmin = if relu { zero_point } else { 0 };
        MulParams {
            a_zero: i32::from(a.zero_point),
            b_zero: i32::from(b.zero_point),
            multiplier: ((f64::from(a.scale) * f64::from(b.scale)) / f64::from(out.scale)) as f32,
            zero_point,
            lo: (qmin - zero_point) as f32,
            hi: (255 - zero_point) as f32,
        }
    }

    /// `requantize((q_a − z_a)·(q_b − z_b), m, z_y, qmin, 255)`.
    #[inline(always)]
    fn apply(&self, a: u8, b: u8) -> u8 {
        let acc = (i32::from(a) - self.a_zero) * (i32::from(b) - self.b_zero);
        requantize_parts(acc, self.multiplier, self.zero_point, self.lo, self.hi)
    }
}

/// The arithmetic of one [`QBinaryOp`] with its constants.
enum Arith {
    Add(AddParams),
    Sub(AddParams),
    Mul(MulParams),
}

multiversion! {
    /// Output elements `start..start + out.len()` (flat indices), row segment by row segment.
    fn binary_chunk(arith: &Arith, layout: &Layout, a: &[u8], b: &[u8], start: usize, out: &mut [u8]) {
        for_each_segment(layout, a, b, start, out, |a, b, out| match arith {
            Arith::Add(p) => segment(a, b, out, |x, y| p.output(p.a(x.into()) + p.b(y.into()))),
            Arith::Sub(p) => segment(a, b, out, |x, y| p.output(p.a(x.into()) - p.b(y.into()))),
            Arith::Mul(p) => segment(a, b, out, |x, y| p.apply(x, y)),
        });
    }
}

/// Calls `f(a, b, out)` for each row segment of output elements `start..start + out.len()`
/// (flat indices) with the input runs it reads: an input broadcast along the row is one value.
#[inline(always)]
pub(crate) fn for_each_segment<A, B, O>(
    layout: &Layout,
    a: &[A],
    b: &[B],
    start: usize,
    out: &mut [O],
    mut f: impl FnMut(&[A], &[B], &mut [O]),
) {
    if out.is_empty() {
        return;
    }
    let inner = layout.inner;
    let (mut rows, mut col, mut done) = (Rows::at(layout, start / inner), start % inner, 0);
    while done < out.len() {
        let len = (inner - col).min(out.len() - done);
        let (a0, b0) = (rows.a, rows.b);
        let a = if layout.inner_a {
            &a[a0 + col..][..len]
        } else {
            &a[a0..][..1]
        };
        let b = if layout.inner_b {
            &b[b0 + col..][..len]
        } else {
            &b[b0..][..1]
        };
        f(a, b, &mut out[done..][..len]);
        (done, col) = (done + len, 0);
        rows.advance();
    }
}

/// `out[i] = f(a[i], b[i])` where an input of length 1 (when `out` is longer) is broadcast: one
/// loop per stride pattern, so that each vectorizes with the broadcast value hoisted.
#[inline(always)]
pub(crate) fn segment<A: Copy, B: Copy, O: Copy>(
    a: &[A],
    b: &[B],
    out: &mut [O],
    f: impl Fn(A, B) -> O,
) {
    match (a, b) {
        (&[x], &[y]) => out.fill(f(x, y)),
        (&[x], b) => {
            for (out, &y) in out.iter_mut().zip(b) {
                *out = f(x, y);
            }
        }
        (a, &[y]) => {
            for (out, &x) in out.iter_mut().zip(a) {
                *out = f(x, y);
            }
        }
        (a, b) => {
            for ((out, &x), &y) in out.iter_mut().zip(a).zip(b) {
                *out = f(x, y);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(a: &[usize], b: &[usize], out: &[usize]) -> Layout {
        Layout::new("test", a, b, out).expect("valid broadcast")
    }

    #[test]
    fn collapses_the_common_cases() {
        let same = layout(&[2, 3, 4, 5], &[2, 3, 4, 5], &[2, 3, 4, 5]);
        assert_eq!((same.inner, same.inner_a, same.inner_b), (120, true, true));
        assert!(same.outer.is_empty());
        let gate = layout(&[2, 3, 4, 5], &[2, 1, 1, 5], &[2, 3, 4, 5]);
        assert_eq!((gate.inner, gate.inner_a, gate.inner_b), (5, true, true));
        assert_eq!(gate.outer, vec![(2, 60, 5), (12, 5, 0)]);
        let row = Rows::at(&gate, 12 + 7);
        assert_eq!((row.a, row.b), (60 + 35, 5));
        let scalar = layout(&[2, 3, 4, 5], &[2, 1, 1, 1], &[2, 3, 4, 5]);
        assert_eq!(
            (scalar.inner, scalar.inner_a, scalar.inner_b),
            (60, true, false)
        );
        assert_eq!(scalar.outer, vec![(2, 60, 1)]);
        let ones = layout(&[1, 1], &[1, 1], &[1, 1]);
        assert_eq!((ones.inner, ones.outer.len()), (1, 0));
    }

    #[test]
    fn walking_rows_matches_positioning_at_each_row() {
        let l = layout(&[3, 1, 4, 1, 2], &[1, 5, 4, 6, 1], &[3, 5, 4, 6, 2]);
        let rows = 3 * 5 * 4 * 6 * 2 / l.inner;
        let mut walk = Rows::at(&l, 0);
        for row in 0..rows {
            let at = Rows::at(&l, row);
            assert_eq!(
                (walk.a, walk.b, &walk.index),
                (at.a, at.b, &at.index),
                "row {row}"
            );
            walk.advance();
        }
        assert_eq!((walk.a, walk.b), (0, 0), "wraps past the last row");
    }

    #[test]
    fn rejects_bad_broadcasts() {
        assert!(Layout::new("t", &[2, 3], &[3], &[2, 3]).is_err());
        assert!(Layout::new("t", &[2, 3], &[2, 2], &[2, 3]).is_err());
        assert!(Layout::new("t", &[2, 3], &[2, 3], &[1, 3]).is_err());
    }
}

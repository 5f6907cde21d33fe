//! Quantized add and sub where an input or the output is 16-bit: the arithmetic of
//! [`qbinary`](crate::kernels::qbinary)'s add and sub (PyTorch's `qadd_kernel`), each input read
//! at its own width and the result clamped to the output's range, so that on `u8` inputs and
//! output it writes exactly `qbinary`'s bytes. Same broadcasting and shape rules as `qbinary`.
//!
//! A 16-bit value `q ≤ 65535` and its zero point are exact in `f32`, so every step is the
//! `u8` op's with wider integers; `c·(1/s_y)` for a 16-bit output is rounded to `f32` (an
//! error of at most 2^-8 of an output step) before the round half to even, as for `u8`.
//! Products of two 16-bit values overflow `qbinary`'s `i32` mul; there is no 16-bit mul.

use rayon::prelude::*;

use super::{WideInput, WideOutput, WideQParams};
use crate::kernels::QBinaryOp;
use crate::kernels::binary::{AddParams, Layout, elements, for_each_segment, segment};
use crate::kernels::elementwise::CHUNK;
use crate::kernels::params::expect_len;
use crate::{Error, Result};

/// One input of [`qbinary_wide`]: `u8` or `u16` values, their physical row-major shape and
/// their quantization (a `u8` value's zero point as a `u16`).
#[derive(Clone, Copy, Debug)]
pub struct WideTensorRef<'a, T> {
    /// The values, `shape.iter().product()` of them.
    pub data: &'a [T],
    /// The physical (row-major) shape of `data`.
    pub shape: &'a [usize],
    /// How the values are quantized.
    pub qparams: WideQParams,
}

/// Quantized add or sub of `a` and `b` with NumPy broadcasting into `out` (`out_shape`,
/// quantized with `out_qp`), a fused ReLU if `relu`, where each of the three is `u8` or `u16`.
/// Per output element, exactly (see the module docs):
/// `a' = fma(s_a, f32(q_a), s_a·(−f32(z_a)))`, `b'` likewise, `c = a' ± b'` in `f32`,
/// `c = max(c, 0)` for a fused ReLU, then `clamp(c·(1/s_y), −z_y, MAX − z_y)` rounded half to
/// even, plus `z_y`. [`QBinaryOp::Mul`], a bad shape or length, a scale that is not finite and
/// positive or a zero point beyond a type's range is an `Err`, never a panic.
pub fn qbinary_wide<A: WideInput, B: WideInput, O: WideOutput>(
    op: QBinaryOp,
    a: WideTensorRef<'_, A>,
    b: WideTensorRef<'_, B>,
    out_shape: &[usize],
    out_qp: WideQParams,
    relu: bool,
    out: &mut [O],
) -> Result<()> {
    let what = match op {
        QBinaryOp::Add => "add",
        QBinaryOp::Sub => "sub",
        QBinaryOp::Mul => {
            return Err(Error::Unsupported(
                "a 16-bit mul (the product of two 16-bit values overflows i32)".into(),
            ));
        }
    };
    check(what, "input a", a.qparams, A::MAX)?;
    check(what, "input b", b.qparams, B::MAX)?;
    check(what, "output", out_qp, O::MAX)?;
    let (a_len, b_len, out_len) = (elements(a.shape)?, elements(b.shape)?, elements(out_shape)?);
    let layout = Layout::new(what, a.shape, b.shape, out_shape)?;
    expect_len(&format!("{what} input a"), a.data.len(), a_len)?;
    expect_len(&format!("{what} input b"), b.data.len(), b_len)?;
    expect_len(&format!("{what} output"), out.len(), out_len)?;
    let qps = [a.qparams, b.qparams, out_qp];
    let p = AddParams::ranged(
        qps.map(|q| q.scale),
        qps.map(|q| q.zero_point),
        O::MAX,
        relu,
    );
    let sub = op == QBinaryOp::Sub;
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(i, out)| {
        for_each_segment(&layout, a.data, b.data, i * CHUNK, out, |a, b, out| {
            segment(a, b, out, |x: A, y: B| {
                let (x, y) = (p.a(value(x)), p.b(value(y)));
                O::from_clamped(i64::from(p.quantized(if sub { x - y } else { x + y })))
            })
        });
    });
    Ok(())
}

/// The integer an element holds, as an `f32` (exact).
#[inline(always)]
fn value<T: WideInput>(q: T) -> f32 {
    (i32::from(q.to_i16()) + T::OFFSET) as f32
}

/// `Err` unless `qp`'s scale is finite and positive and its zero point at most `max`.
fn check(what: &str, side: &str, qp: WideQParams, max: u16) -> Result<()> {
    qp.check(&format!("{what} {side}"))?;
    if qp.zero_point > max {
        return Err(Error::InvalidArgument(format!(
            "{what} {side}: zero point {} beyond the type's largest value {max}",
            qp.zero_point
        )));
    }
    Ok(())
}

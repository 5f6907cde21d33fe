//! Quantized add and sub steps with a 16-bit input or output: each value's bytes viewed at
//! its width, then [`kernels::qbinary_wide`].

use crate::kernels::{self, QBinaryOp, WideInput, WideQParams, WideTensorRef};
use crate::program::Domain;
use crate::{Error, Result};

/// A value of a binary step as the arena holds it.
pub(super) struct Held<'a> {
    /// Its bytes (two per value when 16-bit).
    pub bytes: &'a [u8],
    /// Its physical (row-major, NHWC for images) shape.
    pub shape: &'a [usize],
    /// How it is held.
    pub domain: Domain,
}

impl Held<'_> {
    fn u8(&self) -> Result<WideTensorRef<'_, u8>> {
        Ok(WideTensorRef {
            data: self.bytes,
            shape: self.shape,
            qparams: qparams(self.domain)?,
        })
    }

    fn u16(&self) -> Result<WideTensorRef<'_, u16>> {
        Ok(WideTensorRef {
            data: kernels::as_u16(self.bytes)?,
            shape: self.shape,
            qparams: qparams(self.domain)?,
        })
    }
}

/// The output of a binary step: its arena bytes, physical shape and domain.
pub(super) struct Output<'a> {
    /// Its bytes (two per value when 16-bit).
    pub bytes: &'a mut [u8],
    /// Its physical shape.
    pub shape: &'a [usize],
    /// How it is held.
    pub domain: Domain,
}

/// `a op b` into `out`, a fused ReLU if `relu`, each at its own width.
pub(super) fn run(op: QBinaryOp, [a, b]: [Held; 2], out: Output, relu: bool) -> Result<()> {
    match (a.domain.bytes(), b.domain.bytes()) {
        (1, 1) => into(op, a.u8()?, b.u8()?, out, relu),
        (1, _) => into(op, a.u8()?, b.u16()?, out, relu),
        (_, 1) => into(op, a.u16()?, b.u8()?, out, relu),
        _ => into(op, a.u16()?, b.u16()?, out, relu),
    }
}

/// [`run`] with the inputs viewed: the output viewed at its width.
fn into<A: WideInput, B: WideInput>(
    op: QBinaryOp,
    a: WideTensorRef<A>,
    b: WideTensorRef<B>,
    out: Output,
    relu: bool,
) -> Result<()> {
    let qp = qparams(out.domain)?;
    match out.domain.bytes() {
        1 => kernels::qbinary_wide(op, a, b, out.shape, qp, relu, out.bytes),
        _ => {
            let bytes = kernels::as_u16_mut(out.bytes)?;
            kernels::qbinary_wide(op, a, b, out.shape, qp, relu, bytes)
        }
    }
}

/// The quantization of an integer value, its zero point as a `u16`.
fn qparams(domain: Domain) -> Result<WideQParams> {
    let qp = (domain.act_qparams())
        .ok_or_else(|| Error::InvalidGraph("a float value in a quantized add".into()))?;
    Ok(qp.widened())
}
